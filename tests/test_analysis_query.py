"""The --where grammar and its translation to MLflow's filter string (no MLflow store needed;
the CLI on a real store is tested in test_analysis_report.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.query import Clause, _client_mask, main, parse_where, to_mlflow_filter


def test_grid_fields_are_params_and_others_metrics():
    cl = parse_where("model='seatbelt' and beta>=4 and elbo < -90.5 and layers in (2, 3)")
    assert cl == [
        Clause("params", "model", "=", "seatbelt"),
        Clause("params", "beta", ">=", 4.0),
        Clause("metrics", "elbo", "<", -90.5),
        Clause("params", "layers", "in", (2.0, 3.0)),
    ]
    # numeric comparisons on params are NOT pushed down (params are strings in MLflow)
    assert to_mlflow_filter(cl) == "params.model = 'seatbelt' and metrics.elbo < -90.5"


def test_explicit_prefixes_quotes_and_like():
    cl = parse_where("params.architecture == \"conv\" and metrics.mig>=0.1 and tags.trial_id like 'dsprites-%' "
                     "and dataset != 'chairs' and attributes.status = 'FINISHED'")
    assert [c.kind for c in cl] == ["params", "metrics", "tags", "params", "attributes"]
    assert to_mlflow_filter(cl) == (
        "params.architecture = 'conv' and metrics.mig >= 0.1 and tags.trial_id LIKE 'dsprites-%' "
        "and params.dataset != 'chairs' and attributes.status = 'FINISHED'"
    )
    assert parse_where("") == [] and parse_where(None) == []
    # an unknown bare name compared with a string is a param, with a number a metric
    assert parse_where("architecture='mlp'")[0].kind == "params"
    assert parse_where("auddc_mean > 0.5")[0].kind == "metrics"


@pytest.mark.parametrize("bad, hint", [
    ("model='a' or beta>1", "only 'and'"),
    ("beta >=", "ends after an operator"),
    ("beta 4", "expected an operator"),
    ("model=seatbelt", "quote strings"),
    ("metrics.elbo > 'x'", "compare it with a number"),
    ("beta>=4 and", "ends with 'and'"),
    ("beta in (1, 2", "unclosed"),
    ("model='a' beta>1", "expected 'and'"),
    ("beta >= 4 ; drop", "cannot read"),
])
def test_bad_where_says_what_to_do(bad, hint):
    with pytest.raises(AnalysisError, match=hint):
        parse_where(bad)


def test_client_side_numeric_comparison_on_string_params():
    df = pd.DataFrame({"params.beta": ["1", "4", "10", "4.0", None], "metrics.elbo": [1.0, 2.0, 3.0, 4.0, 5.0]})
    ge4 = _client_mask(df, parse_where("beta>=4")[0])
    assert ge4.tolist() == [False, True, True, True, False]  # "10" >= 4 numerically, not as a string
    eq4 = _client_mask(df, parse_where("beta=4")[0])
    assert eq4.tolist() == [False, True, False, True, False]
    inn = _client_mask(df, parse_where("beta in (1, 10)")[0])
    assert inn.tolist() == [True, False, True, False, False]
    like = _client_mask(pd.DataFrame({"params.model": ["seatbelt", "tcvae", None]}), parse_where("model like 'sea%'")[0])
    assert like.tolist() == [True, False, False]


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["--where", "beta>=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment") and "Traceback" not in err
    assert main(["--out", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    assert main(["--out", str(tmp_path / "r"), "--where", "model='a' or beta>1"]) == 2
    assert "tracking.json is missing" in capsys.readouterr().err
