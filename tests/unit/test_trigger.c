/* test_trigger.c: response classification, DESIGN.md §3 step 7. */
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "unit.h"

#include "trigger.h"
#include "util.h"

static struct trigger_result
classify(long status, const char *body, const char *success_field,
    const char *job_id_field)
{
	struct trigger_result r;

	memset(&r, 0, sizeof(r));
	r.retry_after_s = -1;
	trigger_classify(status, body, body ? strlen(body) : 0, success_field,
	    job_id_field, &r);
	return r;
}

START_TEST(test_2xx_is_success)
{
	static const long codes[] = { 200, 201, 202, 204, 299 };

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		struct trigger_result r = classify(codes[i], "", NULL, NULL);

		ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
		ck_assert_ptr_null(r.error);
		ck_assert_int_eq(r.http_status, codes[i]);
		trigger_result_clear(&r);
	}
}
END_TEST

START_TEST(test_409_is_already_processed)
{
	struct trigger_result r = classify(409, "{\"error\":\"exists\"}",
	    "success", "job_id");

	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	trigger_result_clear(&r);
}
END_TEST

START_TEST(test_transient_codes)
{
	static const long codes[] = { 408, 425, 429, 500, 502, 503, 504, 599 };

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		struct trigger_result r = classify(codes[i], "busy", NULL, NULL);

		ck_assert_int_eq(r.outcome, TRIGGER_TRANSIENT);
		ck_assert_ptr_nonnull(r.error);
		ck_assert_ptr_nonnull(strstr(r.error, "busy"));
		trigger_result_clear(&r);
	}
}
END_TEST

START_TEST(test_other_4xx_permanent)
{
	static const long codes[] = { 400, 401, 403, 404, 405, 410, 413, 422 };

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		struct trigger_result r = classify(codes[i], NULL, NULL, NULL);

		ck_assert_int_eq(r.outcome, TRIGGER_PERMANENT);
		ck_assert_ptr_nonnull(r.error);
		trigger_result_clear(&r);
	}
}
END_TEST

START_TEST(test_success_false_with_200_fails)
{
	struct trigger_result r = classify(200,
	    "{\"success\": false, \"error\": \"model not loaded\"}",
	    "success", "job_id");

	ck_assert_int_eq(r.outcome, TRIGGER_PERMANENT);
	ck_assert_ptr_nonnull(strstr(r.error, "model not loaded"));
	trigger_result_clear(&r);

	r = classify(200, "{\"success\": \"yes\"}", "success", NULL);
	ck_assert_int_eq(r.outcome, TRIGGER_PERMANENT);
	trigger_result_clear(&r);
}
END_TEST

START_TEST(test_success_true_and_job_id)
{
	struct trigger_result r = classify(202,
	    "{\"success\": true, \"job_id\": \"nlp-42\"}", "success", "job_id");

	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	ck_assert_str_eq(r.remote_job_id, "nlp-42");
	trigger_result_clear(&r);

	r = classify(202, "{\"job_id\": 17}", "success", "job_id");
	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	ck_assert_str_eq(r.remote_job_id, "17");
	trigger_result_clear(&r);
}
END_TEST

/* A job id the ledger could not keep is not kept: the rest stands. */
START_TEST(test_job_id_the_ledger_cannot_keep_is_dropped)
{
	static const char *bad[] = {
		"{\"job_id\":\"a\\u0001b\"}",	/* a control character */
		"{\"job_id\":\"\xff\xfe\"}",		/* not UTF-8 */
	};
	struct trigger_result r;
	char *body;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = classify(202, bad[i], "success", "job_id");
		ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
		ck_assert_ptr_null(r.remote_job_id);
		trigger_result_clear(&r);
	}
	body = xasprintf("{\"job_id\":\"%0*d\"}", 1025, 7);
	r = classify(202, body, "success", "job_id");
	ck_assert_ptr_null(r.remote_job_id);
	trigger_result_clear(&r);
	free(body);
	body = xasprintf("{\"job_id\":\"%0*d\"}", 1024, 7);
	r = classify(202, body, "success", "job_id");
	ck_assert_ptr_nonnull(r.remote_job_id);
	ck_assert_uint_eq(strlen(r.remote_job_id), 1024);
	trigger_result_clear(&r);
	free(body);
}
END_TEST

START_TEST(test_missing_success_field_or_no_json_is_success)
{
	struct trigger_result r = classify(202, "accepted", "success", "job_id");

	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	ck_assert_ptr_null(r.remote_job_id);
	trigger_result_clear(&r);

	r = classify(200, "{\"job_id\": \"j\"}", "success", "job_id");
	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	ck_assert_str_eq(r.remote_job_id, "j");
	trigger_result_clear(&r);
}
END_TEST

START_TEST(test_success_field_ignored_when_not_configured)
{
	struct trigger_result r = classify(200, "{\"success\": false}", NULL,
	    NULL);

	ck_assert_int_eq(r.outcome, TRIGGER_SUCCESS);
	trigger_result_clear(&r);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("trigger");
	TCase *tc = tcase_create("classify");

	tcase_add_test(tc, test_2xx_is_success);
	tcase_add_test(tc, test_409_is_already_processed);
	tcase_add_test(tc, test_transient_codes);
	tcase_add_test(tc, test_other_4xx_permanent);
	tcase_add_test(tc, test_success_false_with_200_fails);
	tcase_add_test(tc, test_success_true_and_job_id);
	tcase_add_test(tc, test_missing_success_field_or_no_json_is_success);
	tcase_add_test(tc, test_job_id_the_ledger_cannot_keep_is_dropped);
	tcase_add_test(tc, test_success_field_ignored_when_not_configured);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
