/*
 * template.h: {{path}} templates rendered against a CloudEvent (DESIGN.md §4).
 *
 * A string that is exactly "{{path}}" is replaced by the JSON value at path
 * (any type). {{path}} inside a longer string is interpolated as text:
 * strings as is, numbers and booleans in JSON form, objects and arrays as
 * compact JSON; null cannot be interpolated. A missing path is an error,
 * never an empty string. Paths: id, source, type, subject, time, any
 * extension, data.a.b, documents.
 */
#ifndef STAGERELAY_TEMPLATE_H
#define STAGERELAY_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

/* Value at a dotted path in ctx, or NULL. Borrowed from ctx. */
const cJSON	*template_lookup(const cJSON *ctx, const char *path);

/*
 * Renders a template tree (objects, arrays, scalars; strings may hold
 * templates). Returns a new tree (cJSON_Delete() it) or NULL with err set.
 */
cJSON	*template_render(const cJSON *tmpl, const cJSON *ctx, char *err,
	    size_t errlen);

/* Renders a template string as text. Returns a malloc'd string or NULL. */
char	*template_render_string(const char *tmpl, const cJSON *ctx, char *err,
	    size_t errlen);

/*
 * As template_render_string(), for a URL path: each interpolated value is
 * percent-encoded as one path segment's data ('/', '?', '#', '%', spaces,
 * non-ASCII all encoded), so it cannot change the URL's structure.
 */
char	*template_render_url(const char *tmpl, const cJSON *ctx, char *err,
	    size_t errlen);

/* Whether a template names root or a path below it (root.x, root[0]). */
bool	 template_refers(const char *tmpl, const char *root);
bool	 template_refers_tree(const cJSON *tmpl, const char *root);

/* Syntax check (balanced braces, non-empty paths) for config load. */
int	 template_check(const char *tmpl, char *err, size_t errlen);
int	 template_check_tree(const cJSON *tmpl, char *err, size_t errlen);

#endif
