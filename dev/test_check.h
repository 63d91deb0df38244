/*
dev/test_check.h: the check api of every test program (test_subtrack.c and
the dev/test_gpu programs). one line per check, PASS or FAIL with what was compared;
check_summary() prints the closing "N passed, N failed" that make test sums
(dev/run_tests.sh) and returns the exit status: non-zero on any failure.
include it after the code under test (it needs <stdio.h> and <stdarg.h>).
*/
#ifndef TEST_CHECK_H
#define TEST_CHECK_H

static int g_pass, g_fail;

static void check(int ok, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) { g_pass++; } else { g_fail++; }
    fflush(stdout);
}

static int check_summary(void) {
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}

#endif
