/*
 * route.h: an event turned into the HTTP request of its route (DESIGN.md §4).
 */
#ifndef STAGERELAY_ROUTE_H
#define STAGERELAY_ROUTE_H

#include <stddef.h>

#include "cloudevent.h"
#include "config.h"

/* A rendered request. Everything is owned; request_free() releases it. */
struct request {
	const struct route *route;	/* borrowed from the config */
	char	*method;
	char	*url;
	char	*idempotency_key;	/* also the ledger's document key */
	char	*body;			/* NUL-terminated */
	size_t	 bodylen;
	char	*content_type;
	char	**headers;		/* extra "Name: value" lines: ce-id in body
					   mode, every ce-* in binary mode */
	size_t	 nheaders;
	/* Ids the ledger stores for DBAs; NULL when the event has none. */
	char	*document_id;		/* data.document_id */
	char	*job_id;		/* data.job_id */
	char	*batch_id;		/* data.batch_id */
};

/*
 * Renders the route's idempotency key, URL (base_url + path, or path when
 * it is a full URL; path may hold templates) and body (or the CloudEvent
 * itself in structured/binary content mode). Returns 0, or -1 with err set
 * to the render error (which dead-letters the entry).
 */
int	route_render(const struct route *, const struct config *,
	    const struct cloudevent *, struct request *out, char *err,
	    size_t errlen);
void	request_free(struct request *);

/*
 * Only what recording an event needs (observe only, expired): the key
 * and the ids; no URL, no body. Returns 0, or -1 with err set.
 */
int	route_render_key(const struct route *, const struct cloudevent *,
	    struct request *out, char *err, size_t errlen);

/*
 * The documents file a batch route names for ev, rendered: a malloc'd
 * path, or NULL with err set (a render error).
 */
char	*route_documents_file(const struct route *, const struct cloudevent *,
	    char *err, size_t errlen);

/*
 * The values of a batch route's documents_query for ev: one rendered
 * text per params template, a malloc'd array of documents_query.nparams
 * strings (route_params_free() it), or NULL with err set (a render
 * error: a missing path is never an empty value).
 */
char	**route_documents_query_params(const struct route *,
	    const struct cloudevent *, char *err, size_t errlen);
void	  route_params_free(char **values, size_t n);

/*
 * Renders request part of nparts (1-based) of a batch route. The
 * templates see the event and {{documents}} (documents, an array of
 * document objects each with a string document_id) and {{document_ids}}.
 * A split batch's keys get "#part/nparts" appended, and "~tag" when tag
 * is not NULL (a request carrying only some of its part's documents).
 * Returns 0, or -1 with err set.
 */
int	route_render_batch(const struct route *, const struct config *,
	    const struct cloudevent *, const cJSON *documents, size_t part,
	    size_t nparts, const char *tag, struct request *out, char *err,
	    size_t errlen);

/* Default routes of DESIGN.md §4 (used when the config has no routes:). */
struct route	*route_defaults(size_t *n);
void		 route_free(struct route *);	/* frees members, not the struct */

#endif
