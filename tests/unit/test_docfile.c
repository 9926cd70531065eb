/*
 * test_docfile.c: a batch route's documents file, DESIGN.md §4: inside
 * shared_dir or refused, one JSON document per line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>

#include "unit.h"
#include "docfile.h"
#include "util.h"

static char base[64];		/* a temporary directory */
static char shared[PATH_MAX + 16];	/* base/shared: the shared_dir */
static char err[512];
static struct docfile df;

static void
put(const char *rel, const char *text)
{
	char path[PATH_MAX * 2];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", base, rel);
	ck_assert_ptr_nonnull(f = fopen(path, "w"));
	fputs(text, f);
	fclose(f);
}

static void
setup(void)
{
	char path[PATH_MAX * 2];

	strcpy(base, "/tmp/test_docfile.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(base));
	snprintf(shared, sizeof(shared), "%s/shared", base);
	ck_assert_int_eq(mkdir(shared, 0700), 0);
	snprintf(path, sizeof(path), "%s/stage1", shared);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	put("shared/stage1/ok.jsonl",
	    "{\"document_id\":\"d1\",\"cleaned_text\":\"one\"}\n"
	    "\n"
	    "  \r\n"
	    "{\"document_id\":\"d2\"}\n"
	    "{\"document_id\":\"d1\",\"again\":true}\n"
	    "{\"document_id\":\"d3\"}");		/* no final newline */
	put("outside.jsonl", "{\"document_id\":\"secret\"}\n");
	memset(&df, 0, sizeof(df));
}

static void
teardown(void)
{
	char cmd[PATH_MAX + 16];

	docfile_free(&df);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
	ck_assert_int_eq(system(cmd), 0);
}

static int
read_file(const char *path, size_t max_bytes, size_t max_line)
{
	struct docfile_limits lim = {
		.max_bytes = max_bytes,
		.max_line = max_line,
	};

	err[0] = '\0';
	return docfile_read(shared, path, &lim, &df, err, sizeof(err));
}

static void
refused(const char *path, const char *why)
{
	ck_assert_int_eq(read_file(path, 1 << 20, 1 << 20), DOCFILE_REFUSED);
	ck_assert_msg(strstr(err, why) != NULL, "%s: \"%s\" lacks \"%s\"",
	    path, err, why);
	ck_assert_uint_eq(df.n, 0);
}

START_TEST(test_reads_documents_in_order_once_each)
{
	char abs[PATH_MAX * 2];

	snprintf(abs, sizeof(abs), "%s/stage1/ok.jsonl", shared);
	ck_assert_msg(read_file(abs, 1 << 20, 1 << 20) == 0, "%s", err);
	ck_assert_uint_eq(df.n, 3);
	ck_assert_str_eq(df.ids[0], "d1");
	ck_assert_str_eq(df.ids[1], "d2");
	ck_assert_str_eq(df.ids[2], "d3");
	ck_assert_uint_eq(df.repeated, 1);
	/* The first line of d1 is kept, as written. */
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(df.docs, 0),
	    "cleaned_text")->valuestring, "one");
	ck_assert_int_eq(cJSON_GetArraySize(df.docs), 3);
}
END_TEST

START_TEST(test_relative_paths_are_taken_from_shared_dir)
{
	ck_assert_msg(read_file("stage1/ok.jsonl", 1 << 20, 1 << 20) == 0,
	    "%s", err);
	ck_assert_uint_eq(df.n, 3);
}
END_TEST

START_TEST(test_escapes_are_refused)
{
	char path[PATH_MAX * 2], link[PATH_MAX * 2];

	refused("../outside.jsonl", "\"..\" component is not allowed");
	refused("stage1/../../outside.jsonl", "\"..\"");
	snprintf(path, sizeof(path), "%s/outside.jsonl", base);
	refused(path, "outside shared_dir");
	refused("/etc/passwd", "outside shared_dir");
	/* A path that only starts like shared_dir. */
	snprintf(path, sizeof(path), "%sx/stage1/ok.jsonl", shared);
	refused(path, "outside shared_dir");
	/* Symbolic links out of it, relative and absolute, file and dir. */
	snprintf(link, sizeof(link), "%s/stage1/rel.jsonl", shared);
	ck_assert_int_eq(symlink("../../outside.jsonl", link), 0);
	refused("stage1/rel.jsonl", "symbolic link escapes it");
	snprintf(path, sizeof(path), "%s/outside.jsonl", base);
	snprintf(link, sizeof(link), "%s/stage1/abs.jsonl", shared);
	ck_assert_int_eq(symlink(path, link), 0);
	refused("stage1/abs.jsonl", "symbolic link escapes it");
	snprintf(link, sizeof(link), "%s/up", shared);
	ck_assert_int_eq(symlink(base, link), 0);
	refused("up/outside.jsonl", "symbolic link escapes it");
	refused("", "empty");
	refused("stage1/a\nb.jsonl", "control character");
	refused(shared, "outside shared_dir");
	snprintf(path, sizeof(path), "%s/", shared);
	refused(path, "names shared_dir itself");
}
END_TEST

START_TEST(test_links_inside_are_followed)
{
	char link[PATH_MAX * 2], target[PATH_MAX * 2];

	snprintf(link, sizeof(link), "%s/latest.jsonl", shared);
	ck_assert_int_eq(symlink("stage1/ok.jsonl", link), 0);
	ck_assert_msg(read_file("latest.jsonl", 1 << 20, 1 << 20) == 0, "%s",
	    err);
	ck_assert_uint_eq(df.n, 3);
	docfile_free(&df);
	snprintf(target, sizeof(target), "%s/stage1/ok.jsonl", shared);
	snprintf(link, sizeof(link), "%s/abs.jsonl", shared);
	ck_assert_int_eq(symlink(target, link), 0);
	ck_assert_msg(read_file("abs.jsonl", 1 << 20, 1 << 20) == 0, "%s",
	    err);
	ck_assert_uint_eq(df.n, 3);
}
END_TEST

START_TEST(test_what_is_not_a_regular_file_is_refused)
{
	char path[PATH_MAX * 2];

	snprintf(path, sizeof(path), "%s/stage1/fifo", shared);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	refused("stage1/fifo", "not a regular file");	/* and no hang */
	refused("stage1", "not a regular file");
	/* Not there (yet): it may pass, so it is not refused. */
	ck_assert_int_eq(read_file("stage1/missing.jsonl", 1024, 1024),
	    DOCFILE_UNAVAILABLE);
	ck_assert_ptr_nonnull(strstr(err, "No such file"));
}
END_TEST

START_TEST(test_limits_are_named)
{
	ck_assert_int_eq(read_file("stage1/ok.jsonl", 64, 1 << 20), -1);
	ck_assert_ptr_nonnull(strstr(err, "over max_documents_file_bytes (64)"));
	ck_assert_int_eq(read_file("stage1/ok.jsonl", 1 << 20, 20), -1);
	ck_assert_ptr_nonnull(strstr(err, "line 1:"));
	ck_assert_ptr_nonnull(strstr(err, "line limit (max_event_bytes 20)"));
}
END_TEST

START_TEST(test_count_and_depth_limits_are_named)
{
	struct docfile_limits lim = { .max_documents = 2 };

	/* Four lines with a document (one repeated) count as four. */
	ck_assert_int_eq(docfile_read(shared, "stage1/ok.jsonl", &lim, &df,
	    err, sizeof(err)), DOCFILE_REFUSED);
	ck_assert_str_eq(err, "4 documents, more than max_documents_per_file "
	    "(2)");
	ck_assert_uint_eq(df.n, 0);
	lim.max_documents = 4;
	ck_assert_int_eq(docfile_read(shared, "stage1/ok.jsonl", &lim, &df,
	    err, sizeof(err)), 0);
	ck_assert_uint_eq(df.n, 3);
	docfile_free(&df);

	/* Depth 3 passes at 3; brackets inside strings do not count. */
	put("shared/stage1/deep.jsonl", "{\"document_id\":\"[[[[{{\","
	    "\"a\":[{\"b\":1}]}\n");
	lim.max_depth = 3;
	ck_assert_msg(docfile_read(shared, "stage1/deep.jsonl", &lim, &df,
	    err, sizeof(err)) == 0, "%s", err);
	docfile_free(&df);
	lim.max_depth = 2;
	ck_assert_int_eq(docfile_read(shared, "stage1/deep.jsonl", &lim, &df,
	    err, sizeof(err)), DOCFILE_REFUSED);
	ck_assert_str_eq(err, "line 1: nests JSON deeper than max_json_depth "
	    "(2)");
}
END_TEST

START_TEST(test_document_ids_fit_the_ledger)
{
	char *line;

	for (int len = 1024; len <= 1025; len++) {
		line = xasprintf("{\"document_id\":\"%0*d\"}\n", len, 1);
		put("shared/stage1/long.jsonl", line);
		free(line);
		if (len == 1024) {
			ck_assert_msg(read_file("stage1/long.jsonl", 1 << 20,
			    1 << 20) == 0, "%s", err);
			docfile_free(&df);
		} else
			refused("stage1/long.jsonl", "line 1: document_id is "
			    "1025 bytes, over the 1024 the ledger indexes");
	}
}
END_TEST

START_TEST(test_bad_lines_are_named)
{
	static const struct {
		const char	*text;
		const char	*why;
	} cases[] = {
		{ "{\"document_id\":\"a\"}\n{oops\n", "line 2: not one JSON" },
		{ "[1,2]\n", "line 1: expected a JSON object" },
		{ "{\"document_id\":\"a\"} {}\n", "line 1: not one JSON" },
		{ "{\"x\":1}\n", "line 1: document_id is missing" },
		{ "{\"document_id\":7}\n", "line 1: document_id is not a string" },
		{ "{\"document_id\":\"\"}\n", "line 1: document_id is empty" },
		{ "\n\n{\"document_id\":\"a\\nb\"}\n",
		    "line 3: document_id contains a control character" },
		{ "{\"document_id\":\"a\",\"document_id\":\"b\"}\n",
		    "line 1: the member \"document_id\" appears twice in one "
		    "object" },
		{ "{\"document_id\":\"a\",\"t\":\"x\001y\"}\n",
		    "line 1: a raw control byte (0x01) at byte 26" },
		{ "{\"document_id\":\"\xff\"}\n", "line 1: not valid UTF-8" },
		{ "{\"document_id\":\"a\\u0000b\"}\n",
		    "line 1: a string holds \\u0000 (a NUL character)" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		put("shared/stage1/bad.jsonl", cases[i].text);
		refused("stage1/bad.jsonl", cases[i].why);
	}
	put("shared/stage1/empty.jsonl", "\n\n");
	ck_assert_int_eq(read_file("stage1/empty.jsonl", 1024, 1024), 0);
	ck_assert_uint_eq(df.n, 0);
}
END_TEST

static Suite *
docfile_suite(void)
{
	Suite *s = suite_create("docfile");
	TCase *tc = tcase_create("docfile");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_reads_documents_in_order_once_each);
	tcase_add_test(tc, test_relative_paths_are_taken_from_shared_dir);
	tcase_add_test(tc, test_escapes_are_refused);
	tcase_add_test(tc, test_links_inside_are_followed);
	tcase_add_test(tc, test_what_is_not_a_regular_file_is_refused);
	tcase_add_test(tc, test_limits_are_named);
	tcase_add_test(tc, test_count_and_depth_limits_are_named);
	tcase_add_test(tc, test_document_ids_fit_the_ledger);
	tcase_add_test(tc, test_bad_lines_are_named);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return unit_run(docfile_suite());
}
