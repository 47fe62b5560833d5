/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* A list of client addresses and prefixes ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"),
 * separated by commas, semicolons or white space, for matching client addresses as
 * http_request_client_address() gives them. IPv4 clients seen through an IPv6 socket
 * ("::ffff:10.1.2.3") match IPv4 entries. */

typedef struct AddressList AddressList;

/* -EINVAL for an entry that is not an address or prefix (*ret_bad, optional, names it). */
int address_list_parse(AddressList **ret, const char *s, char **ret_bad);
AddressList *address_list_free(AddressList *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(AddressList *, address_list_free);

bool address_list_contains(const AddressList *l, const char *address);
size_t address_list_size(const AddressList *l);
