/*
 * test_mt_sub.c - retry delays: exponential from `backoff`, capped at
 * `max_backoff`, each between half and the whole of its step (equal
 * jitter), and drawn differently by every process: two engines, or one
 * engine before and after a restart, do not retry in lockstep.
 */
#include "mt_test.h"
#include <sys/wait.h>
#include <unistd.h>
#include "mt_sub.h"

static void test_backoff_doubles_up_to_the_cap_with_equal_jitter(void **state)
{
    (void) state;
    mt_sub_conf c = {.backoff_ms = 200, .max_backoff_ms = 1000};
    const uint64_t step_ms[] = {200, 400, 800, 1000, 1000, 1000};
    for (uint32_t a = 1; a <= 6; a++) {
        int64_t lo = INT64_MAX, hi = 0;
        for (int i = 0; i < 2000; i++) {
            int64_t d = mt_sub_backoff_us(&c, a);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        int64_t step = (int64_t) step_ms[a - 1] * 1000;
        assert_true(lo >= step / 2);
        assert_true(hi <= step);
        /* 2,000 draws spread over most of the range. */
        assert_true(lo < step / 2 + step / 20);
        assert_true(hi > step - step / 20);
    }
    mt_sub_conf zero = {.backoff_ms = 0, .max_backoff_ms = 0};
    assert_int_equal(mt_sub_backoff_us(&zero, 3), 0);
}

/* The first eight delays a fresh process draws, through a pipe. */
static void first_draws(int64_t out[8])
{
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        mt_sub_conf c = {.backoff_ms = 60000, .max_backoff_ms = 60000};
        int64_t d[8];
        for (int i = 0; i < 8; i++) {
            d[i] = mt_sub_backoff_us(&c, 1);
        }
        _exit(write(fd[1], d, sizeof d) == (ssize_t) sizeof d ? 0 : 1);
    }
    close(fd[1]);
    assert_int_equal(read(fd[0], out, 8 * sizeof out[0]), (ssize_t) (8 * sizeof out[0]));
    close(fd[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_each_process_draws_its_own_jitter(void **state)
{
    (void) state;
    /* The parent has drawn nothing: each child seeds its own. */
    int64_t a[8], b[8];
    first_draws(a);
    first_draws(b);
    assert_true(memcmp(a, b, sizeof a) != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_process_draws_its_own_jitter),
        cmocka_unit_test(test_backoff_doubles_up_to_the_cap_with_equal_jitter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
