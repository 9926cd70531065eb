/*
 * stream.h: the Redis side (hiredis): the consumer group, reading entries,
 * batched XACK and the dead-letter stream. Knows nothing of CloudEvents.
 */
#ifndef STAGERELAY_STREAM_H
#define STAGERELAY_STREAM_H

#include <stdbool.h>
#include <stddef.h>

#include "cloudevent.h"
#include "config.h"

struct stream;

struct stream_entry {
	const char		*id;		/* borrowed from the batch */
	struct entry_field	*fields;	/* point into the reply */
	size_t			 nfields;	/* 0: entry deleted before read */
};

/* Entries of one read. stream_batch_free() releases the reply. */
struct stream_batch {
	struct stream_entry	*entries;
	size_t			 n;
	void			*reply;		/* the redisReply they point into */
};

/* What the dead-letter entry says besides the original fields. */
struct dead_letter {
	const char	*reason;	/* dlq_reason */
	const char	*detail;	/* dlq_detail */
	int		 attempts;	/* dlq_attempts */
	long		 http_status;	/* dlq_http_status, 0 = none */
};

enum {
	STREAM_ERR = -1,	/* connection or protocol error: reconnect */
	STREAM_NOGROUP = -2	/* the key or the group vanished */
};

/* Never NULL. Connects lazily: stream_connect() before use. */
struct stream	*stream_new(const struct config *, const char *consumer);
void		 stream_free(struct stream *);
int		 stream_connect(struct stream *);
void		 stream_disconnect(struct stream *);
bool		 stream_connected(const struct stream *);

/*
 * XGROUP CREATE ... MKSTREAM from "0" or "$". Returns 1 when created,
 * 0 when it existed already, STREAM_ERR on error.
 */
int	stream_create_group(struct stream *, bool from_start);

/*
 * XREADGROUP GROUP g me COUNT count BLOCK block_ms STREAMS s start.
 * start is ">" for new entries or an id for the own pending list.
 * block_ms < 0 reads without BLOCK. Returns the number of entries,
 * STREAM_NOGROUP or STREAM_ERR.
 */
int	stream_read(struct stream *, const char *start, int count,
	    int block_ms, struct stream_batch *out);
void	stream_batch_free(struct stream_batch *);

/* One XACK for all ids. Returns 0 or STREAM_ERR. */
int	stream_ack(struct stream *, const char *const *ids, size_t n);

/* XADD dead_letter_stream MAXLEN ~ N * <original fields> dlq_* ... */
int	stream_dead_letter(struct stream *, const struct stream_entry *,
	    const struct dead_letter *);

/* One entry to append: its fields in order. */
struct stream_new_entry {
	const struct entry_field *fields;
	size_t			  nfields;
};

/*
 * XADD source_stream [MAXLEN ~ maxlen] * <fields> for each of n entries,
 * all or none (MULTI/EXEC when n > 1). The new ids go into ids[i]
 * (idlen bytes each). Returns 0, STREAM_ERR when Redis is unreachable,
 * or -3 when it refused the command (its message logged).
 */
#define STREAM_REFUSED	-3
int	stream_append(struct stream *, const struct stream_new_entry *,
	    size_t n, long maxlen, char (*ids)[48]);

/*
 * Client-side timeout of every command from now on (the default allows
 * for the blocking read: poll_interval_ms + 10 s).
 */
void	stream_set_timeout(struct stream *, int ms);

/* Number of entries in our own pending list, or -1. */
long	stream_pending_count(struct stream *);

/* One entry of our own pending list (XPENDING, extended form). */
struct stream_pending {
	char		 id[48];
	long long	 idle_ms;
	long long	 deliveries;	/* times delivered so far */
};

/*
 * Up to count entries of our own pending list between start and end
 * ("-", "+", an id, or "(id" to exclude it), oldest first; *out is
 * allocated (free it). Returns the number, STREAM_NOGROUP or STREAM_ERR.
 * Delivery counts are untouched.
 */
int	stream_pending_own(struct stream *, const char *start, const char *end,
	    int count, struct stream_pending **out);

/*
 * XCLAIM ids to us and return them with their fields; each one's delivery
 * count goes up by one. Ids no longer in the stream are dropped by Redis.
 * Returns the number, STREAM_NOGROUP or STREAM_ERR.
 */
int	stream_claim(struct stream *, const char *const *ids, size_t n,
	    struct stream_batch *out);

/*
 * XCLAIM ... JUSTID to ourselves: resets the idle time of entries we wait
 * on, so no sweeper takes them; delivery counts are untouched. Returns
 * how many were claimed, STREAM_NOGROUP or STREAM_ERR.
 */
int	stream_touch(struct stream *, const char *const *ids, size_t n);

/* Ids a reply named; owned. */
struct stream_ids {
	char	**ids;
	size_t	  n;
};
void	stream_ids_free(struct stream_ids *);

/*
 * One XAUTOCLAIM page: entries idle for claim_idle_ms in any consumer's
 * pending list, from cursor on, become ours (delivery count + 1). next
 * receives the cursor to continue from ("0-0": done); deleted receives
 * the ids Redis dropped because they were deleted from the stream.
 * Returns the number of entries, STREAM_NOGROUP or STREAM_ERR.
 */
int	stream_autoclaim(struct stream *, const char *cursor, int count,
	    struct stream_batch *out, char *next, size_t nextlen,
	    struct stream_ids *deleted);

/* A consumer of the group (XINFO CONSUMERS). */
struct stream_consumer {
	char		*name;
	long long	 pending;
	long long	 idle_ms;
};
int	stream_consumers(struct stream *, struct stream_consumer **out);
void	stream_consumers_free(struct stream_consumer *, int n);

/*
 * XGROUP DELCONSUMER name, only if it has nothing pending (checked in the
 * same script). Returns 1 removed, 0 kept, STREAM_NOGROUP or STREAM_ERR.
 */
int	stream_remove_consumer(struct stream *, const char *name);

/*
 * XGROUP CREATECONSUMER: we show in XINFO CONSUMERS from the start, not
 * only after our first read returned something. Returns 0, STREAM_NOGROUP
 * or STREAM_ERR.
 */
int	stream_create_consumer(struct stream *);

/* What XINFO GROUPS and XLEN say about our group and streams. */
struct stream_group_info {
	bool		 group_exists;
	long long	 lag;		/* entries not yet delivered; -1 unknown */
	long long	 pending;	/* delivered, not acknowledged */
	long long	 length;	/* XLEN of the source stream */
	long long	 dead_letter_length;
};
int	stream_group_info(struct stream *, struct stream_group_info *);

/* 1 if the entry is still in the stream, 0 if not, or STREAM_ERR. */
int	stream_entry_exists(struct stream *, const char *id);

/* A deep copy in one allocation: free() it. */
struct stream_entry *stream_entry_dup(const struct stream_entry *);

/*
 * The hiredis context, connected (stream_connect() first if need be), for
 * tools that run their own commands (dlq.c). NULL after logging why.
 * Borrowed: stream_free() releases it.
 */
struct redisContext *stream_redis(struct stream *);

/*
 * XRANGE source_stream start end COUNT count: history, whatever the
 * group has read. Returns the number of entries or STREAM_ERR.
 */
int	stream_range(struct stream *, const char *start, const char *end,
	    int count, struct stream_batch *out);

/* The newest entry's id into id: 1, 0 when the stream is empty, or STREAM_ERR. */
int	stream_last_id(struct stream *, char *id, size_t idlen);

/* XLEN of the source stream, or STREAM_ERR. */
long long stream_length(struct stream *);

/*
 * The dlq_source_id of every dead-letter entry that came from the source
 * stream: entries already dead-lettered (process-backlog does not add
 * them twice). out is owned. Returns the number or STREAM_ERR.
 */
int	stream_dead_letter_sources(struct stream *, struct stream_ids *out);

#endif
