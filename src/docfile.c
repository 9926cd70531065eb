/*
 * docfile.c: a batch route's documents file, read without leaving
 * shared_dir.
 *
 * The open goes through openat2(RESOLVE_BENEATH) from a descriptor of
 * shared_dir, so the kernel refuses any resolution (a symlink, however
 * deep) that would step out of it. Where that refuses an absolute
 * symbolic link, or openat2 is missing (Linux before 5.6), the resolved
 * path is checked against shared_dir and opened with O_NOFOLLOW.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef SYS_openat2
#include <linux/openat2.h>
#endif

#include <cJSON.h>

#include "cloudevent.h"
#include "docfile.h"
#include "ledger.h"
#include "util.h"

/* Says why, keeping errno for the caller to judge. */
static void
say_errno(char *err, size_t errlen, const char *what)
{
	int saved = errno;

	snprintf(err, errlen, "%s: %s", what, strerror(saved));
	errno = saved;
}

/*
 * Errors that may pass (a file not there yet, an NFS hiccup, too many
 * open files): the event is tried again, not dead-lettered.
 */
static bool
passing(int e)
{
	switch (e) {
	case ENOENT:
	case EIO:
	case ESTALE:
	case EMFILE:
	case ENFILE:
	case EAGAIN:
	case EINTR:
	case ENOMEM:
	case EACCES:
	case ENODEV:
	case EBUSY:
	case ETIMEDOUT:
		return true;
	default:
		return false;
	}
}

/* A ".." component anywhere: refused before any lookup. */
static bool
has_dotdot(const char *p)
{
	while (*p != '\0') {
		size_t len = strcspn(p, "/");

		if (len == 2 && p[0] == '.' && p[1] == '.')
			return true;
		p += len;
		while (*p == '/')
			p++;
	}
	return false;
}

/* path below root, or NULL when it is absolute and elsewhere. */
static const char *
below(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	while (len > 1 && dir[len - 1] == '/')
		len--;
	if (strncmp(path, dir, len) != 0 || path[len] != '/')
		return NULL;
	for (path += len; *path == '/'; path++)
		;
	return path;
}

/*
 * realpath() and open() are two steps a swapped directory could slip
 * between: what was opened is checked again through /proc.
 */
static int
open_fallback(const char *root, const char *rel, char *err, size_t errlen)
{
	char *joined = xasprintf("%s/%s", root, rel), real[PATH_MAX];
	char proc[64], opened[PATH_MAX];
	ssize_t n;
	int fd = -1;

	if (realpath(joined, real) == NULL)
		say_errno(err, errlen, rel);
	else if (below(real, root) == NULL) {
		snprintf(err, errlen, "%s: resolves outside shared_dir %s (a "
		    "symbolic link escapes it)", rel, root);
		errno = EXDEV;
	} else if ((fd = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK | O_NOFOLLOW)) == -1)
		say_errno(err, errlen, rel);
	else {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if ((n = readlink(proc, opened, sizeof(opened) - 1)) < 0 ||
		    (opened[n] = '\0', below(opened, root) == NULL)) {
			snprintf(err, errlen, "%s: resolves outside shared_dir "
			    "%s (it changed while it was opened)", rel, root);
			errno = EXDEV;
			close(fd);
			fd = -1;
		}
	}
	free(joined);
	return fd;
}

/* Opens rel beneath root; -1 with err set. */
static int
open_beneath(const char *root, const char *rel, char *err, size_t errlen)
{
#ifdef SYS_openat2
	struct open_how how;
	int dfd, fd, saved;

	if ((dfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1) {
		say_errno(err, errlen, root);
		return -1;
	}
	memset(&how, 0, sizeof(how));
	/* O_NONBLOCK: a FIFO must not hang the worker before fstat. */
	how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
	how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
	fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof(how));
	saved = errno;
	close(dfd);
	if (fd >= 0)
		return fd;
	/*
	 * ENOSYS: an old kernel; EPERM: a seccomp filter; EXDEV: the walk
	 * met an absolute symbolic link (or one out): its target decides.
	 */
	if (saved == ENOSYS || saved == EPERM || saved == EXDEV)
		return open_fallback(root, rel, err, errlen);
	errno = saved;
	say_errno(err, errlen, rel);
	return -1;
#else
	return open_fallback(root, rel, err, errlen);
#endif
}

/* Reads all of fd, at most max bytes; NULL with err set. */
static char *
slurp(int fd, const char *path, size_t max, size_t *len, char *err,
    size_t errlen)
{
	struct stat st;
	char *data;
	size_t n = 0;
	ssize_t r;

	if (fstat(fd, &st) == -1) {
		say_errno(err, errlen, path);
		return NULL;
	}
	errno = 0;		/* what follows is refused, not passing */
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		return NULL;
	}
	if (max != 0 && (uintmax_t)st.st_size > max) {
		snprintf(err, errlen, "%s: %jd bytes, over "
		    "max_documents_file_bytes (%zu)", path,
		    (intmax_t)st.st_size, max);
		return NULL;
	}
	/* The file may grow while it is read: never past the limit. */
	data = xmalloc((size_t)st.st_size + 2);
	while (n <= (size_t)st.st_size &&
	    (r = read(fd, data + n, (size_t)st.st_size + 1 - n)) != 0) {
		if (r == -1) {
			if (errno == EINTR)
				continue;
			say_errno(err, errlen, path);
			free(data);
			return NULL;
		}
		n += (size_t)r;
	}
	if (n > (size_t)st.st_size) {
		snprintf(err, errlen, "%s: grew while it was read", path);
		free(data);
		errno = 0;
		return NULL;
	}
	data[n] = '\0';
	*len = n;
	return data;
}

static bool
blank(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* One line into a document; NULL with err set. */
static cJSON *
parse_line(const char *line, size_t len, size_t lineno,
    const struct docfile_limits *lim, char *err, size_t errlen)
{
	const char *end = NULL;
	cJSON *doc;
	int stop = lim->max_depth > 0 ? lim->max_depth + 1 : INT_MAX;
	bool nul;

	if (lim->max_line != 0 && len > lim->max_line) {
		snprintf(err, errlen, "line %zu: %zu bytes, over the line "
		    "limit (max_event_bytes %zu)", lineno, len, lim->max_line);
		return NULL;
	}
	if (json_scan(line, len, stop, &nul) >= stop) {
		snprintf(err, errlen, "line %zu: nests JSON deeper than "
		    "max_json_depth (%d)", lineno, lim->max_depth);
		return NULL;
	}
	/*
	 * cJSON takes raw control bytes inside strings (JSON does not) and
	 * stops a string at a NUL byte; PostgreSQL and the API want UTF-8.
	 */
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];

		if (c < 0x20 && c != '\t' && c != '\r') {
			snprintf(err, errlen, "line %zu: a raw control byte "
			    "(0x%02x) at byte %zu", lineno, c, i + 1);
			return NULL;
		}
	}
	if (!cloudevent_utf8_valid(line, len)) {
		snprintf(err, errlen, "line %zu: not valid UTF-8", lineno);
		return NULL;
	}
	if (nul) {
		snprintf(err, errlen, "line %zu: a string holds \\u0000 (a NUL "
		    "character)", lineno);
		return NULL;
	}
	doc = cJSON_ParseWithLengthOpts(line, len, &end, 0);
	if (doc == NULL || (end != NULL && !blank(end,
	    len - (size_t)(end - line)))) {
		snprintf(err, errlen, "line %zu: not one JSON value", lineno);
		cJSON_Delete(doc);
		return NULL;
	}
	return doc;
}

/* The name is the source's: nothing but printable ASCII goes out. */
static void
shown_name(char *name, size_t len, const char *s)
{
	size_t i;

	for (i = 0; i + 1 < len && s[i] != '\0'; i++)
		name[i] = s[i] > 0x20 && s[i] < 0x7f && s[i] != '"' ? s[i] : '?';
	name[i] = '\0';
}

/* What every document must be, whatever it was read from. */
static int
check_document(const cJSON *doc, const char *where, char *err, size_t errlen)
{
	const char *dup;
	const cJSON *id;
	char name[65];

	if ((dup = cloudevent_json_duplicate(doc)) != NULL) {
		shown_name(name, sizeof(name), dup);
		snprintf(err, errlen, "%s: the member \"%s\" appears twice in "
		    "one object", where, name);
		return -1;
	}
	if (!cJSON_IsObject(doc)) {
		snprintf(err, errlen, "%s: expected a JSON object (a "
		    "document)", where);
		return -1;
	}
	id = cJSON_GetObjectItemCaseSensitive(doc, "document_id");
	if (!cJSON_IsString(id) || *id->valuestring == '\0' ||
	    str_has_control(id->valuestring)) {
		snprintf(err, errlen, "%s: document_id %s", where,
		    id == NULL ? "is missing" : !cJSON_IsString(id) ?
		    "is not a string" : *id->valuestring == '\0' ?
		    "is empty" : "contains a control character");
		return -1;
	}
	if (strlen(id->valuestring) > LEDGER_KEY_MAX) {
		snprintf(err, errlen, "%s: document_id is %zu bytes, over the "
		    "%d the ledger indexes", where, strlen(id->valuestring),
		    LEDGER_KEY_MAX);
		return -1;
	}
	return 0;
}

int
docfile_begin(struct docfile_builder *b, struct docfile *out, size_t n,
    const struct docfile_limits *lim, char *err, size_t errlen)
{
	memset(b, 0, sizeof(*b));
	memset(out, 0, sizeof(*out));
	/* Counted before anything is parsed or stored. */
	if (lim->max_documents != 0 && n > lim->max_documents) {
		snprintf(err, errlen, "%zu documents, more than "
		    "max_documents_per_file (%zu)", n, lim->max_documents);
		return -1;
	}
	b->out = out;
	b->max = n;
	strset_init(&b->seen, n);
	out->docs = cJSON_CreateArray();
	out->ids = xcalloc(n + 1, sizeof(*out->ids));
	return 0;
}

int
docfile_add(struct docfile_builder *b, cJSON *doc, const char *where,
    char *err, size_t errlen)
{
	struct docfile *out = b->out;
	const char *id;

	if (check_document(doc, where, err, errlen) == -1) {
		cJSON_Delete(doc);
		return -1;
	}
	if (out->n + out->repeated >= b->max) {
		/* More than docfile_begin() was told: a caller's bug. */
		snprintf(err, errlen, "%s: more documents than counted", where);
		cJSON_Delete(doc);
		return -1;
	}
	id = cJSON_GetObjectItemCaseSensitive(doc, "document_id")->valuestring;
	if (!strset_add(&b->seen, id)) {
		out->repeated++;
		cJSON_Delete(doc);
		return 0;
	}
	cJSON_AddItemToArray(out->docs, doc);
	out->ids[out->n++] = id;
	return 0;
}

void
docfile_end(struct docfile_builder *b, int rv)
{
	strset_free(&b->seen);
	if (rv == -1 && b->out != NULL)
		docfile_free(b->out);
	b->out = NULL;
}

static int
parse(const char *data, size_t len, const struct docfile_limits *lim,
    struct docfile *out, char *err, size_t errlen)
{
	struct docfile_builder b;
	size_t lineno = 0, lines = 0;
	const char *p, *nl;
	char where[32];
	int rv = 0;

	/* Sized by the lines that hold something: blank ones cost nothing. */
	for (p = data; p < data + len; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(data + len - p))) == NULL)
			nl = data + len;
		if (!blank(p, (size_t)(nl - p)))
			lines++;
	}
	if (docfile_begin(&b, out, lines, lim, err, errlen) == -1)
		return -1;
	for (p = data; p < data + len && rv == 0; p = nl + 1) {
		cJSON *doc;

		if ((nl = memchr(p, '\n', (size_t)(data + len - p))) == NULL)
			nl = data + len;
		lineno++;
		if (blank(p, (size_t)(nl - p)))
			continue;
		snprintf(where, sizeof(where), "line %zu", lineno);
		if ((doc = parse_line(p, (size_t)(nl - p), lineno, lim,
		    err, errlen)) == NULL)
			rv = -1;
		else
			rv = docfile_add(&b, doc, where, err, errlen);
	}
	docfile_end(&b, rv);
	return rv;
}

int
docfile_read(const char *shared_dir, const char *path,
    const struct docfile_limits *lim, struct docfile *out, char *err,
    size_t errlen)
{
	char root[PATH_MAX], *data;
	const char *rel;
	size_t len;
	int fd, rv;

	memset(out, 0, sizeof(*out));
	if (path == NULL || *path == '\0') {
		snprintf(err, errlen, "the documents file path is empty");
		return -1;
	}
	if (str_has_control(path)) {
		snprintf(err, errlen, "the documents file path contains a "
		    "control character");
		return -1;
	}
	if (has_dotdot(path)) {
		snprintf(err, errlen, "%s: a \"..\" component is not allowed",
		    path);
		return -1;
	}
	if (realpath(shared_dir, root) == NULL) {
		snprintf(err, errlen, "shared_dir %s: %s", shared_dir,
		    strerror(errno));
		return DOCFILE_UNAVAILABLE;	/* not mounted yet, perhaps */
	}
	if (path[0] != '/')
		rel = path;
	else if ((rel = below(path, shared_dir)) == NULL &&
	    (rel = below(path, root)) == NULL) {
		snprintf(err, errlen, "%s: outside shared_dir %s", path,
		    shared_dir);
		return -1;
	}
	if (*rel == '\0') {
		snprintf(err, errlen, "%s: names shared_dir itself", path);
		return -1;
	}
	if ((fd = open_beneath(root, rel, err, errlen)) == -1)
		return passing(errno) ? DOCFILE_UNAVAILABLE : DOCFILE_REFUSED;
	data = slurp(fd, path, lim->max_bytes, &len, err, errlen);
	if (data == NULL) {
		rv = passing(errno) ? DOCFILE_UNAVAILABLE : DOCFILE_REFUSED;
		close(fd);
		return rv;
	}
	close(fd);
	rv = parse(data, len, lim, out, err, errlen);
	free(data);
	return rv;
}

void
docfile_free(struct docfile *d)
{
	if (d == NULL)
		return;
	cJSON_Delete(d->docs);
	free(d->ids);
	memset(d, 0, sizeof(*d));
}
