/* Umbrella header: everything public in rx. */
#ifndef RX_RX_H
#define RX_RX_H

#include <rx/addr.h>
#include <rx/buffer.h>
#include <rx/channel.h>
#include <rx/conn.h>
#include <rx/connector.h>
#include <rx/file.h>
#include <rx/group.h>
#include <rx/join.h>
#include <rx/listener.h>
#include <rx/loop.h>
#include <rx/master.h>
#include <rx/server.h>
#include <rx/signal.h>
#include <rx/timer.h>
#include <rx/work.h>

#endif
