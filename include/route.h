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

/* Default routes of DESIGN.md §4 (used when the config has no routes:). */
struct route	*route_defaults(size_t *n);
void		 route_free(struct route *);	/* frees members, not the struct */

#endif
