"""A bus error (SIGBUS) when a memory-mapped model file shrinks under us.

Headers and sizes are validated before any kernel runs, but a file can still be
truncated or rewritten by another process while it is mapped; touching a page past
its new end then raises SIGBUS, and Python would die with a bare "Bus error" and
a core dump. The command line runs under `bus_errors_reported()`: one line on stderr
and exit status 1. The previous handler comes back when the block ends.
"""
import contextlib

cdef extern from *:
    """
    #include <signal.h>
    #include <string.h>
    #include <unistd.h>

    static const char qllama_sigbus_message[] =
        "qllama: error: bus error reading a memory-mapped file: was the model file "
        "truncated or rewritten while in use?\\n";
    static int qllama_sigbus_taken;
    static struct sigaction qllama_sigbus_previous;

    static void qllama_on_sigbus(int sig) {
        (void)sig;  /* only async-signal-safe calls here */
        if (__atomic_exchange_n(&qllama_sigbus_taken, 1, __ATOMIC_SEQ_CST))
            for (;;) pause();  /* another thread is reporting; its _exit ends us all */
        ssize_t r = write(2, qllama_sigbus_message, sizeof qllama_sigbus_message - 1);
        (void)r;
        _exit(1);
    }

    static int qllama_sigbus_install(void) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = qllama_on_sigbus;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGBUS, &sa, &qllama_sigbus_previous);
    }

    static int qllama_sigbus_restore(void) {
        return sigaction(SIGBUS, &qllama_sigbus_previous, NULL);
    }
    """
    int qllama_sigbus_install()
    int qllama_sigbus_restore()


cdef int depth = 0  # nested blocks: only the outermost installs and restores


@contextlib.contextmanager
def bus_errors_reported():
    """Within the block, SIGBUS (every thread) prints one line and exits with status 1."""
    global depth
    if depth == 0 and qllama_sigbus_install() != 0:
        raise OSError("cannot install the SIGBUS handler")
    depth += 1
    try:
        yield
    finally:
        depth -= 1
        if depth == 0:
            qllama_sigbus_restore()
