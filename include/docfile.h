/*
 * docfile.h: the documents file of a batch route (DESIGN.md §4): a JSONL
 * file, one Stage 1 document per line, that must lie inside shared_dir.
 * The path comes from an event and is untrusted: ".." is refused before
 * anything is opened, and the open itself cannot leave shared_dir (a
 * symlink that points out of it fails), so nothing outside is read.
 */
#ifndef STAGERELAY_DOCFILE_H
#define STAGERELAY_DOCFILE_H

#include <stddef.h>

#include <cJSON.h>

#include "util.h"

struct docfile {
	cJSON		 *docs;		/* array of the lines' objects, in file
					   order, repeated document ids dropped */
	const char	**ids;		/* ids[i]: docs[i]'s document_id, borrowed */
	size_t		  n;
	size_t		  repeated;	/* lines whose document_id came before */
};

enum {
	DOCFILE_REFUSED = -1,		/* never readable as it is */
	DOCFILE_UNAVAILABLE = -2	/* may pass: missing, I/O, no fds */
};

/* What a documents file may not exceed; 0 means no limit. */
struct docfile_limits {
	size_t		 max_bytes;	/* max_documents_file_bytes */
	size_t		 max_line;	/* max_event_bytes */
	size_t		 max_documents;	/* max_documents_per_file */
	int		 max_depth;	/* max_json_depth */
};

/*
 * Reads path (absolute under shared_dir, or relative to it). A file over
 * a limit of lim is refused, the limit named by its config key; every
 * non-blank line must be a JSON object with a non-empty string
 * document_id. Returns 0, or DOCFILE_REFUSED or DOCFILE_UNAVAILABLE with
 * err set to why (a dead-letter detail that names the line or the limit).
 * out is to be released with docfile_free().
 */
int	docfile_read(const char *shared_dir, const char *path,
	    const struct docfile_limits *lim, struct docfile *out, char *err,
	    size_t errlen);
void	docfile_free(struct docfile *);

/*
 * The same documents from any source (a file's lines, a query's rows:
 * docquery.h), under the same rules. docfile_begin() refuses more than
 * lim->max_documents documents before any is stored, and sizes out for
 * n. docfile_add() takes doc (a JSON object with a non-empty string
 * document_id, no member twice, a key the ledger can index), whatever
 * happens to it; a document_id met before is dropped and counted in
 * out->repeated. where ("line 3", "row 3") names it in err. Both return
 * 0, or -1 with err set. docfile_end() releases the builder, and out too
 * when rv is -1; out is otherwise the caller's (docfile_free()).
 */
struct docfile_builder {
	struct docfile	*out;
	struct strset	 seen;
	size_t		 max;
};

int	docfile_begin(struct docfile_builder *, struct docfile *out, size_t n,
	    const struct docfile_limits *lim, char *err, size_t errlen);
int	docfile_add(struct docfile_builder *, cJSON *doc, const char *where,
	    char *err, size_t errlen);
void	docfile_end(struct docfile_builder *, int rv);

#endif
