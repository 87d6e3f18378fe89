/*
 * The runner every Check unit test's main() shares: one suite of one test
 * case, a per-test timeout, exit status 0 when every test passed.
 *
 *     const TTest *tests[] = { first_test, second_test };
 *     return rs_check_run("name", 30, tests, sizeof(tests) / sizeof(tests[0]));
 */
#ifndef REFSCOPE_CHECK_RUN_H
#define REFSCOPE_CHECK_RUN_H

#include <check.h>
#include <stddef.h>
#include <stdlib.h>

static inline int rs_check_run(const char *name, double timeout_s, const TTest *const *tests, size_t n)
{
    Suite *s = suite_create(name);
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout_s);
    for (size_t i = 0; i < n; i++)
        tcase_add_test(tc, tests[i]);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
