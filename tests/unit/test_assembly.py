from dataclasses import replace

from threadpoolctl import threadpool_info, threadpool_limits

from skyfix.runtime.core.config import Config
from skyfix.runtime.flight.assembly import build_chain
from skyfix.sim.flight import FlightSpec


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def test_the_chain_holds_numpys_blas_to_its_threads(ortho_pack):
    """The chain runs its stages on threads of its own: once it is built, numpy's BLAS runs
    on daemon.blas_threads (1 by default), not one thread per core on top of them."""
    cfg = Config()
    with threadpool_limits(limits=None):  # whatever the test sets is undone on leaving
        threadpool_limits(2, user_api="blas")
        assert _blas_threads() == {2}
        build_chain(cfg, ortho_pack, FlightSpec().camera)
        assert _blas_threads() == {cfg.daemon.blas_threads} == {1}
        build_chain(replace(cfg, daemon=replace(cfg.daemon, blas_threads=0)), ortho_pack,
                    FlightSpec().camera)
        assert _blas_threads() == {1}  # 0: left as it is
