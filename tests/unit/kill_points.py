"""For child processes that must die at an exact point: SIGKILL themselves right after the k-th
call a module makes into `os` (the tests of the journal's crash safety run these)."""

import contextlib
import os
import signal


def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)


class KillingOs:
    """Stands in for the os module: every call goes through, and the process is SIGKILLed right
    after call number k (counting from 0; attributes that are not callable are not counted)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def __getattr__(self, name):
        f = getattr(os, name)
        if not callable(f):
            return f

        def call(*a, **kw):
            r = f(*a, **kw)
            if self.calls == self.k:
                die()
            self.calls += 1
            return r

        return call


@contextlib.contextmanager
def killed_after_os_call(module, k: int):
    """Within the block, `module.os` is a KillingOs(k)."""
    module.os = KillingOs(k)
    try:
        yield
    finally:
        module.os = os
