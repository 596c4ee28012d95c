"""Fuzzing every public method (and the CLI's file reader) with messy inputs.

Each input either works, giving finite results of the right shape and leaving the model and
the input untouched, or raises a ``ValueError``/``TypeError``/``NotFittedError`` with a
message. Every test runs ``FUZZ_EXAMPLES`` examples and counts them; the counts are printed
at the end of the pytest run (``conftest.pytest_terminal_summary``).
"""

import copy
import string
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.exceptions import NotFittedError

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.cli import CLIError, read_data

FUZZ_EXAMPLES = 1000
FUZZ_COUNTS: dict[str, Counter] = {}  # test name -> outcomes; read by conftest
ACCEPTED = (ValueError, TypeError, NotFittedError)
TINY = dict(hidden_layer_sizes=(8,), max_iter=1, batch_size=64, quadrature_n_grid=16,
            ais_n_particles=16, ais_n_steps=4, sample_steps=4, n_proposals=4,
            random_state=0)

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e30, -1e30, 1e300, -1e300, 1e-300, 5e-324]),
    st.floats(-3, 3),
)
ELEMENTS = {
    "f": FLOATS,
    "i": None,  # hypothesis draws from the dtype's own range
    "u": None,
    "b": None,
    "c": None,
    "O": st.one_of(FLOATS, st.integers(-5, 5), st.text(string.printable, max_size=3),
                   st.none()),
    "U": st.text(string.printable, max_size=4),
}
DTYPES = ["float64", "float32", "float16", "int64", "int8", "uint8", "bool", "complex128",
          "object", "<U4"]


@st.composite
def messy_inputs(draw, width: int | None = 2):
    """Arrays of any dtype and rank, special values and layouts, in several containers."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES + ["float64"] * 6)))
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 12, 40]))
    d = draw(st.sampled_from([width or 2] * 4 + [0, 1, 3]))
    shape = draw(st.sampled_from([(n, d)] * 8 + [(), (n,), (n, d, 2)]))
    kind = dtype.kind if dtype.kind in ELEMENTS else "f"
    if kind == "f" and dtype != np.float16:
        elements = draw(st.sampled_from(["any", "finite", "finite"]))
        elements = FLOATS if elements == "any" else st.floats(-1e6, 1e6)
    else:
        elements = ELEMENTS[kind]
    X = draw(hnp.arrays(dtype, shape, elements=elements))
    if X.ndim == 2 and X.size and dtype.kind in "fiu":
        layout = draw(st.sampled_from(["as is", "duplicates", "constant column", "huge",
                                       "extreme entry"]))
        if layout == "duplicates":
            X[:] = X[0]
        elif layout == "constant column":
            X[:, 0] = X[0, 0]
        elif layout == "huge" and dtype.kind == "f":
            X = X.astype(np.float64) * 1e30
        elif layout == "extreme entry":
            X = X.astype(np.float64)
            i, j = draw(st.integers(0, X.shape[0] - 1)), draw(st.integers(0, X.shape[1] - 1))
            X[i, j] = draw(st.sampled_from([1e300, -1e300, 1.7e308, 1e38, 4e38, 1e-310]))
    container = draw(st.sampled_from(["ndarray"] * 4 + ["list", "dataframe", "named",
                                                       "sparse", "fortran"]))
    if container == "list":
        return X.tolist()
    if container in ("dataframe", "named") and X.ndim == 2:
        columns = [f"x{j}" for j in range(X.shape[1])] if container == "named" else None
        return pd.DataFrame(X, columns=columns)
    if container == "sparse" and X.ndim == 2 and dtype.kind in "fiub":
        return sp.csr_matrix(X.astype(np.float32) if dtype == np.float16 else X)
    if container == "fortran":
        return np.asfortranarray(X)
    return X


def _snapshot(X):
    if isinstance(X, pd.DataFrame):
        return X.copy(deep=True)
    if sp.issparse(X):
        return X.copy()
    return X.copy() if isinstance(X, np.ndarray) else np.array(X, dtype=object)


def _unchanged(X, before) -> bool:
    """Same values (NaN equal to NaN), shape and type as the copy taken before the call."""
    if isinstance(X, pd.DataFrame):
        return X.equals(before)
    if sp.issparse(X):
        X, before = X.toarray(), before.toarray()
    a = X if isinstance(X, np.ndarray) else np.array(X, dtype=object)
    if a.shape != before.shape:
        return False
    same = (a == before) | ((a != a) & (before != before))
    return bool(np.all(same))


def _call_keeping_input(X, what: str, call):
    """``call()``, then (also when it raised) assert that it left ``X`` unchanged."""
    before = _snapshot(X)
    try:
        return call()
    finally:
        assert _unchanged(X, before), f"{what} modified its input"


def _fuzz(name: str, strategy, check) -> None:
    """Run ``check`` on ``FUZZ_EXAMPLES`` examples of ``strategy``; record the outcomes."""
    counts = FUZZ_COUNTS.setdefault(name, Counter())

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        counts["examples"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # names, conversions, convergence: not failures
            np.seterr(all="ignore")
            try:
                check(case)
            except ACCEPTED as exc:
                assert str(exc).strip(), f"{type(exc).__name__} without a message"
                counts[type(exc).__name__] += 1
                return
        counts["worked"] += 1

    run()
    assert counts["examples"] >= FUZZ_EXAMPLES


@pytest.fixture(scope="module")
def fitted():
    X = np.random.RandomState(0).randn(100, 2) * [1.0, 3.0] + [5.0, -1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {which: _fresh(which).fit(X) for which in ("dcd", "cd", "dcd-tc")}
    for est in models.values():
        est.log_partition_  # noqa: B018 - cached once, not per example
    probe = X[:5]
    energies = {k: est.energy(probe) for k, est in models.items()}
    yield models
    for k, est in models.items():  # no fuzzed call changed a fitted model
        assert np.array_equal(est.energy(probe), energies[k]), k


def _finite_params(est) -> bool:
    return all(torch.isfinite(p).all() for p in est.energy_net_.parameters())


ESTIMATOR = st.sampled_from(["dcd", "cd", "dcd-tc"])


def _fresh(which: str):
    if which == "dcd":
        return DCDEnergyEstimator(**TINY)
    if which == "dcd-tc":  # time-conditional: its own ladder, recovery sampling, Tweedie
        return DCDEnergyEstimator(**TINY, time_conditional=True, recovery_steps=2)
    return CDEnergyEstimator(**{k: v for k, v in TINY.items() if k != "n_proposals"})


def _n_out(X) -> int:
    return X.shape[0] if hasattr(X, "shape") else len(X)


def test_fuzz_fit():
    def check(case):
        which, X = case
        est = _fresh(which)
        _call_keeping_input(X, "fit", lambda: est.fit(X))
        assert _finite_params(est)
        log_q = est.score_samples(X)
        assert log_q.shape == (_n_out(X),) and not np.isnan(log_q).any()

    _fuzz("fit", st.tuples(ESTIMATOR, messy_inputs(width=None)), check)


def test_fuzz_partial_fit():
    def check(case):
        which, X, X2 = case
        est = _fresh(which)
        est.partial_fit(X)
        assert _finite_params(est)
        _call_keeping_input(X2, "partial_fit", lambda: est.partial_fit(X2))
        assert _finite_params(est)
        assert not np.isnan(est.energy(X2)).any()

    valid = hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.just(2)),
                       elements=st.floats(-10, 10))
    _fuzz("partial_fit", st.tuples(ESTIMATOR, valid, messy_inputs()), check)


@pytest.mark.parametrize("method", ["energy", "score_samples", "score"])
def test_fuzz_evaluation(method, fitted):
    def check(case):
        which, X = case
        out = _call_keeping_input(X, method, lambda: getattr(fitted[which], method)(X))
        if method == "score":
            assert isinstance(out, float) and not np.isnan(out)
        else:
            assert out.shape == (_n_out(X),) and out.dtype == np.float64
            assert not np.isnan(out).any()

    _fuzz(method, st.tuples(ESTIMATOR, messy_inputs()), check)


NOISE_STD = st.one_of(st.floats(0.01, 3), FLOATS, st.integers(-2, 3), st.none(),
                      st.text(max_size=2), st.booleans(), st.just(np.float32(0.3)), st.just([0.1]))
METHOD = st.one_of(st.sampled_from(["auto", "posterior_mean", "map", "tweedie"] * 3),
                   st.text(max_size=3),
                   st.none())
RANDOM_STATE = st.one_of(st.integers(0, 9), st.none(), st.integers(-5, 2**32 + 5),
                         st.text(max_size=2), st.floats(-1, 1))


def test_fuzz_denoise(fitted):
    def check(case):
        which, X, noise_std, method, random_state = case
        out = _call_keeping_input(X, "denoise", lambda: fitted[which].denoise(
            X, noise_std, method=method, random_state=random_state))
        assert out.shape == (_n_out(X), 2) and np.isfinite(out).all()

    _fuzz("denoise", st.tuples(ESTIMATOR, messy_inputs(), NOISE_STD, METHOD, RANDOM_STATE),
          check)


def test_fuzz_impute(fitted):
    def check(case):
        which, X, n_draws, random_state = case
        out = _call_keeping_input(X, "impute", lambda: fitted[which].impute(
            X, n_draws=n_draws, random_state=random_state))
        assert out.shape == (_n_out(X), 2) and np.isfinite(out).all()
        given = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
        assert np.array_equal(out[~np.isnan(given)], given[~np.isnan(given)])

    n_draws = st.one_of(st.integers(1, 3), st.integers(-2, 0), st.none(), st.floats(0, 2),
                        st.text(max_size=2), st.booleans())
    _fuzz("impute", st.tuples(ESTIMATOR, messy_inputs(), n_draws, RANDOM_STATE), check)


def test_fuzz_sample(fitted):
    def check(case):
        which, n_samples, random_state = case
        out = fitted[which].sample(n_samples, random_state=random_state)
        assert out.shape == (n_samples, 2) and np.isfinite(out).all()

    n_samples = st.one_of(st.integers(1, 50), st.integers(-3, 2000), st.floats(-1, 5),
                          st.none(), st.text(max_size=2), st.booleans(),
                          st.just(np.int64(3)), st.just([2]))
    _fuzz("sample", st.tuples(ESTIMATOR, n_samples, RANDOM_STATE), check)


def test_fuzz_unfitted_methods_raise_not_fitted():
    def check(case):
        which, method, X = case
        est = _fresh(which)
        call = {"sample": lambda: est.sample(2), "denoise": lambda: est.denoise(X, 0.1)}.get(
            method, lambda: getattr(est, method)(X))
        with pytest.raises(NotFittedError):
            call()

    methods = st.sampled_from(["energy", "score_samples", "score", "sample", "denoise"])
    _fuzz("unfitted", st.tuples(ESTIMATOR, methods, messy_inputs()), check)


@st.composite
def data_files(draw):
    """CSV/TSV text (numbers, specials, junk, ragged rows, headers) or ``.npy`` arrays."""
    kind = draw(st.sampled_from(["csv", "tsv", "npy", "bytes"]))
    if kind == "npy":
        X = draw(messy_inputs(width=None))
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        return ".npy", X
    if kind == "bytes":
        return ".csv", draw(st.binary(max_size=64))
    sep = "," if kind == "csv" else "\t"
    token = st.one_of(FLOATS.map(repr), st.integers(-9, 9).map(str),
                      st.sampled_from(["", " ", "nan", "inf", "-inf", "x", '"1"', '"', "1e999",
                                       "0x10", "1_0", "\u00e9"]))
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(token, min_size=width - 1, max_size=width + 1),
                         max_size=6))
    header = draw(st.sampled_from(["", sep.join(f"c{j}" for j in range(width)) + "\n"]))
    text = header + "\n".join(sep.join(r) for r in rows)
    return f".{kind}", text.encode("utf-8")


def test_fuzz_cli_data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")

    def check(case):
        suffix, content = case
        path = folder / f"data{suffix}"
        if isinstance(content, np.ndarray):
            np.save(path, content, allow_pickle=content.dtype == object)
        else:
            path.write_bytes(content)
        try:
            X = read_data(str(path))
        except CLIError as exc:
            assert str(exc).strip()
            raise ValueError(str(exc)) from exc  # counted as a clear error
        assert X.ndim == 2 and X.shape[0] >= 1 and X.shape[1] >= 1
        assert X.dtype == np.float64 and np.isfinite(X).all()

    _fuzz("cli read_data", data_files(), check)


# ---------------------------------------------------------------- load of mutated files
def _entries(payload: dict) -> list[tuple]:
    """Every entry of a saved file, as a path: (key,) or (key, name) inside a container."""
    import json

    paths = [(key,) for key in payload]
    for key in ("params", "scalars"):
        paths += [(key, name) for name in json.loads(payload[key])]
    for key in ("arrays", "tensors", "energy_net", "cache"):
        paths += [(key, name) for name in payload[key]]
    return paths


RETYPED = st.sampled_from([
    None, True, 0, -1, 3, 2**63, 1e308, float("nan"), float("inf"), "x", "", [], [1, 2],
    [True], {}, {"a": 1}, {"__tuple__": [1]}, (15000, 15000), "(8,)",
    torch.zeros(0), torch.zeros(3), torch.zeros(2, dtype=torch.long),
    torch.full((2,), float("nan")), torch.zeros(2, 2, dtype=torch.float64), torch.tensor(1.0)])


def _mutate(payload: dict, path: tuple, op: str, value, factor: int) -> None:
    import json

    key = path[0]
    if len(path) == 1:
        container, name, decode = payload, key, None
    elif key in ("params", "scalars"):
        container, name, decode = json.loads(payload[key]), path[1], key
    else:
        container, name, decode = payload[key], path[1], None
    old = container[name]
    if op == "drop":
        del container[name]
    elif op == "retype":
        if isinstance(value, torch.Tensor):  # JSON holds no tensors: their values instead
            value = value.tolist() if decode else value.clone()
        container[name] = value
    elif op == "truncate":
        if isinstance(old, torch.Tensor) and old.numel():
            container[name] = old.reshape(-1)[: old.numel() // 2]
        elif isinstance(old, str | list):
            container[name] = old[: len(old) // 2]
        elif isinstance(old, dict):
            container[name] = dict(list(old.items())[: len(old) // 2])
        elif isinstance(old, int | float) and not isinstance(old, bool):
            container[name] = type(old)(old / 2)
    elif op == "enlarge":
        if isinstance(old, torch.Tensor):
            container[name] = torch.cat([old.reshape(1, *old.shape)] * factor) if old.ndim \
                else old * 10.0**factor
        elif isinstance(old, str | list):
            container[name] = old * factor
        elif isinstance(old, int | float) and not isinstance(old, bool):
            container[name] = old * 10**factor
        elif isinstance(old, dict) and old.get("__tuple__"):  # a tuple parameter
            container[name] = {"__tuple__": [v * 10**factor if isinstance(v, int) else v
                                             for v in old["__tuple__"]]}
        elif isinstance(old, tuple):
            container[name] = tuple(v * 10**factor if isinstance(v, int) else v for v in old)
    if decode is not None:
        payload[decode] = json.dumps(container)


def test_fuzz_load_of_mutated_files(tmp_path_factory, monkeypatch):
    import resource

    from skdcd._base import BaseEnergyEstimator

    folder = tmp_path_factory.mktemp("load")
    X = np.random.RandomState(0).randn(60, 2)
    bases = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for which in ("dcd", "cd", "dcd-tc"):
            est = _fresh(which)
            if which == "cd":
                est.set_params(persistent=True, buffer_size=32)
            est.fit(X).log_partition_  # noqa: B018 - log Z in the file
            est.save(folder / f"{which}.pt")
            bases[which] = (type(est), torch.load(folder / f"{which}.pt", weights_only=True),
                            (folder / f"{which}.pt").read_bytes())
    built = []
    build = BaseEnergyEstimator._build_energy_net

    def spy(self, n_features):
        net = build(self, n_features)
        if next(net.parameters()).device.type != "meta":
            built.append(sum(t.numel() for t in net.state_dict().values()))
        return net

    monkeypatch.setattr(BaseEnergyEstimator, "_build_energy_net", spy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def check(case):
        which, index, op, value, factor, cut = case
        cls, base, raw = bases[which]
        path = folder / "mutated.pt"
        if op in ("truncate the file", "append to the file"):
            path.write_bytes(raw[: int(cut * len(raw))] if op == "truncate the file"
                             else raw + raw[: int(cut * len(raw))])
            declared = sum(t.numel() for t in base["energy_net"].values())
        else:
            payload = copy.deepcopy(base)
            entries = _entries(payload)
            _mutate(payload, entries[index % len(entries)], op, value, factor)
            torch.save(payload, path)
            weights = payload.get("energy_net")
            declared = (sum(t.numel() for t in weights.values()
                            if isinstance(t, torch.Tensor))
                        if isinstance(weights, dict) else 0)
        built.clear()
        try:
            est = cls.load(path)
        except ValueError as exc:
            assert "mutated.pt" in str(exc), exc  # names the file
            raise
        except (TypeError, NotFittedError) as exc:  # _fuzz would count these as accepted
            raise AssertionError(f"load raised {type(exc).__name__}: {exc}") from exc
        finally:  # never a network beyond the tensors the file holds
            assert all(n <= declared + 64 for n in built), (built, declared)
        try:  # a file that loads gives a working model
            assert est.energy(X[:3]).shape == (3,)
        except Exception as exc:
            raise AssertionError(f"a loaded model failed: {type(exc).__name__}: {exc}") from exc


    ops = st.sampled_from(["drop", "retype", "truncate", "enlarge", "truncate the file",
                           "append to the file"])
    _fuzz("load (mutated files)", st.tuples(
        st.sampled_from(list(bases)), st.integers(0, 10**6), ops, RETYPED,
        st.integers(2, 6), st.floats(0, 1)), check)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 300 * 1024, f"peak memory grew by {grown / 1024:.0f} MB"  # ru_maxrss: KiB
