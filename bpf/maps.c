/* The compilation unit that only creates the maps (see maps.h): built once per process by
 * fileserver/maps.py, which keeps it open for as long as any program build uses the maps. */
#define FS_MAPS_ONLY 1
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <linux/stddef.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
