"""A window's close runs whole. A bcc tool stops on Ctrl-C (KeyboardInterrupt), a service on
SIGTERM: one that lands halfway through a close, after the channel moved to the next epoch, used
to lose the ended window's books (the final close then booked an empty epoch; CI once saw a
tcplife run's 40 acted events in no window). Now it is raised once the window is booked."""
import os
import signal

import pytest

from kernel_util import needs_root
from migrator.agent.feed import Feed
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.schema import demo_registry
from migrator.shared.signals import Terminated, held, sigterm_interrupts

N = 300


def test_a_signal_inside_the_block_reaches_its_handler_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_sigterm_held_raises_terminated_after_the_block():
    done = []
    with sigterm_interrupts():
        with pytest.raises(Terminated):
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # twice: handed over once
                done.append("whole")
    assert done == ["whole"]


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.kernel
@needs_root
def test_ctrl_c_after_the_epoch_moved_is_raised_once_the_window_is_booked():
    with Probe("synthetic") as probe:
        feed = Feed(probe.bpf, "events", channel=probe.channel, mode="DUAL", registry=demo_registry(),
                    window_seconds=1e9, batch_interval=0.01)
        try:
            gen = LoadGen(N)
            probe.set_target(gen.pid)
            gen.start()
            assert gen.wait(timeout=30) == 0
            advance = feed.pipe._advance_epoch

            def advance_then_ctrl_c():  # the worst moment: the channel is already on the next epoch
                ended = advance()
                os.kill(os.getpid(), signal.SIGINT)
                return ended

            feed.pipe._advance_epoch = advance_then_ctrl_c
            with pytest.raises(KeyboardInterrupt):
                feed.close_window()
            books = {w.channel: (w.attempts, w.delivered, w.residual) for w in feed.windows}
            assert books == {"perf": (N, N, 0), "ring": (N, N, 0)}
        finally:
            feed.close()


@pytest.mark.kernel
@needs_root
def test_ctrl_c_during_a_shadow_runs_close_reaches_its_window_callback_first():
    with Probe("synthetic") as probe:
        probe.set_mode("DUAL")
        from migrator.dataplane.pipeline import Pipeline

        pipe = Pipeline(probe.channel)
        try:
            gen = LoadGen(N)
            probe.set_target(gen.pid)
            gen.start()
            assert gen.wait(timeout=30) == 0
            advance = pipe._advance_epoch

            def advance_then_ctrl_c():
                ended = advance()
                os.kill(os.getpid(), signal.SIGINT)
                return ended

            pipe._advance_epoch = advance_then_ctrl_c
            seen = []
            with pytest.raises(KeyboardInterrupt):
                pipe.run(seconds=60, window=0.01, on_window=seen.extend)
            assert {w.channel: (w.attempts, w.delivered, w.residual) for w in seen} == {
                "perf": (N, N, 0), "ring": (N, N, 0)}
        finally:
            pipe.close()
