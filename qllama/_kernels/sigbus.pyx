"""A bus error (SIGBUS) when a memory-mapped model file shrinks under us.

Headers and sizes are validated before any kernel runs, but a file can still be
truncated or rewritten by another process while it is mapped; touching a page past
its new end then raises SIGBUS, and Python would die with a bare "Bus error" and
a core dump. The command-line tool installs this handler instead: one line on
stderr and exit status 1. (Library users keep whatever handler they have.)
"""

cdef extern from *:
    """
    #include <signal.h>
    #include <string.h>
    #include <unistd.h>

    static const char qllama_sigbus_message[] =
        "qllama: error: bus error reading a memory-mapped file: was the model file "
        "truncated or rewritten while in use?\\n";

    static void qllama_on_sigbus(int sig) {
        (void)sig;  /* only async-signal-safe calls here */
        ssize_t r = write(2, qllama_sigbus_message, sizeof qllama_sigbus_message - 1);
        (void)r;
        _exit(1);
    }

    static int qllama_catch_sigbus(void) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = qllama_on_sigbus;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGBUS, &sa, NULL);
    }
    """
    int qllama_catch_sigbus()


def catch_sigbus():
    """Install the handler (process-wide, every thread); OSError if that fails."""
    if qllama_catch_sigbus() != 0:
        raise OSError("cannot install the SIGBUS handler")
