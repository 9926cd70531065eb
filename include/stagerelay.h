/*
 * stagerelay.h: the umbrella header. Modules, in the order data flows:
 * stream → cloudevent → route/template → ledger → trigger → ledger → stream.
 */
#ifndef STAGERELAY_H
#define STAGERELAY_H

#include "util.h"
#include "log.h"
#include "config.h"
#include "cloudevent.h"
#include "template.h"
#include "route.h"
#include "stream.h"
#include "ledger.h"
#include "trigger.h"
#include "worker.h"

#endif
