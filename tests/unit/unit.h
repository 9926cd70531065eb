/* unit.h: what every Check test program shares. */
#ifndef STAGERELAY_TESTS_UNIT_H
#define STAGERELAY_TESTS_UNIT_H

#include <stdlib.h>

#include <check.h>

/* Runs a suite; the exit status automake's test driver reads. */
static inline int
unit_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
