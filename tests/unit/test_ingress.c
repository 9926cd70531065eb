/*
 * test_ingress.c: the rules of the ingress that need no server: the
 * CloudEvents HTTP binding's modes and percent-encoding, the signature,
 * and the JSON spans that keep an event's data as it was sent.
 */
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "unit.h"

#include "ingress.h"
#include "util.h"

START_TEST(test_modes)
{
	ck_assert_int_eq(ingress_mode_of("application/cloudevents+json", 0),
	    INGRESS_STRUCTURED);
	ck_assert_int_eq(ingress_mode_of(" Application/CloudEvents+JSON; "
	    "charset=utf-8", 1), INGRESS_STRUCTURED);
	ck_assert_int_eq(ingress_mode_of("application/cloudevents-batch+json",
	    0), INGRESS_BATCH);
	/* Binary: any media type (or none), with ce-specversion. */
	ck_assert_int_eq(ingress_mode_of("application/json", 1),
	    INGRESS_BINARY);
	ck_assert_int_eq(ingress_mode_of(NULL, 1), INGRESS_BINARY);
	ck_assert_int_eq(ingress_mode_of("text/plain", 1), INGRESS_BINARY);
	ck_assert_int_eq(ingress_mode_of("application/json", 0),
	    INGRESS_UNSUPPORTED);
	ck_assert_int_eq(ingress_mode_of(NULL, 0), INGRESS_UNSUPPORTED);
	/* Another event format is not read as binary data either. */
	ck_assert_int_eq(ingress_mode_of("application/cloudevents+avro", 1),
	    INGRESS_UNSUPPORTED);
}
END_TEST

START_TEST(test_percent_decode)
{
	size_t n;
	char *s;

	s = ingress_percent_decode("job/caf%C3%A9%201", &n);
	ck_assert_str_eq(s, "job/caf\xc3\xa9 1");
	ck_assert_uint_eq(n, 11);
	free(s);
	s = ingress_percent_decode("%25%22plain", &n);
	ck_assert_str_eq(s, "%\"plain");
	free(s);
	/* Bytes are decoded as they are; UTF-8 is the decoder's to judge. */
	s = ingress_percent_decode("caf%C3%28", &n);
	ck_assert_uint_eq(n, 5);
	ck_assert_int_eq((unsigned char)s[3], 0xc3);
	free(s);
	s = ingress_percent_decode("a%00b", &n);
	ck_assert_uint_eq(n, 3);
	free(s);
	ck_assert_ptr_null(ingress_percent_decode("100%", &n));
	ck_assert_ptr_null(ingress_percent_decode("%4", &n));
	ck_assert_ptr_null(ingress_percent_decode("%G1", &n));
	ck_assert_ptr_null(ingress_percent_decode("%%41", &n));
}
END_TEST

START_TEST(test_signature)
{
	/* RFC 4231 test case 2. */
	static const char body[] = "what do ya want for nothing?";
	static const char good[] = "sha256=5bdcc146bf60754e6a042426089575c7"
	    "5a003f089d2739839dec58b964ec3843";

	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    good), 1);
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    "SHA256=5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B9"
	    "64EC3843"), 1);
	ck_assert_int_eq(ingress_signature_ok("jefe", body, strlen(body),
	    good), 0);
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body) - 1,
	    good), 0);
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    NULL), 0);
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    "sha1=5bdcc146bf60754e6a042426089575c75a003f08"), 0);
	/* One digit short, or one that is not hex. */
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b96"
	    "4ec384"), 0);
	ck_assert_int_eq(ingress_signature_ok("Jefe", body, strlen(body),
	    "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b96"
	    "4ec384g"), 0);
}
END_TEST

static void
expect_span(const char *json, const char *name, int rv, const char *want)
{
	const char *start = NULL;
	size_t n = 0;

	ck_assert_int_eq(json_member_span(json, strlen(json), name, &start,
	    &n), rv);
	if (rv == 1) {
		ck_assert_uint_eq(n, strlen(want));
		ck_assert_int_eq(memcmp(start, want, n), 0);
	}
}

START_TEST(test_member_span)
{
	expect_span("{\"id\":\"1\",\"data\":{\"n\":12345678901234567890}}",
	    "data", 1, "{\"n\":12345678901234567890}");
	expect_span(" { \"data\" : [1, \"]\", {\"a\":\"}\"}] , \"x\":1 } ",
	    "data", 1, "[1, \"]\", {\"a\":\"}\"}]");
	expect_span("{\"da\\\"ta\":1,\"data\":\"a\\\"b\"}", "data", 1,
	    "\"a\\\"b\"");
	expect_span("{\"data\":null}", "data", 1, "null");
	expect_span("{\"data\":-1.5e3}", "data", 1, "-1.5e3");
	expect_span("{\"x\":{\"data\":1}}", "data", 0, NULL);
	expect_span("{}", "data", 0, NULL);
	expect_span("[1]", "data", -1, NULL);
	expect_span("{\"data\":", "data", -1, NULL);
	expect_span("{\"data\":\"open", "data", -1, NULL);
}
END_TEST

START_TEST(test_skip_value)
{
	static const char arr[] = "[{\"a\":[1,2]}, \"s]\" ,3]";
	const char *p = arr + 1, *end = arr + strlen(arr);

	p = json_skip_value(p, end);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(*p, ',');
	p = json_skip_value(p + 1, end);
	ck_assert_int_eq(*p, ' ');
	p = json_skip_ws(p, end);
	p = json_skip_value(p + 1, end);
	ck_assert_int_eq(*p, ']');
	ck_assert_ptr_null(json_skip_value(end, end));
}
END_TEST

static Suite *
ingress_suite(void)
{
	Suite *s = suite_create("ingress");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_modes);
	tcase_add_test(tc, test_percent_decode);
	tcase_add_test(tc, test_signature);
	tcase_add_test(tc, test_member_span);
	tcase_add_test(tc, test_skip_value);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return unit_run(ingress_suite());
}
