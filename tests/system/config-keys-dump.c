/* SPDX-License-Identifier: MIT */
/* Helper of test-config-docs.py: prints the configuration key table of src/shared/config-keys.c
 * ("NAME<TAB>DEFAULT<TAB>credential|-" per line), or with --check=FILE loads FILE as the
 * configuration file (strictly: unknown keys and bad values are errors) and says why not. */

#include <stdio.h>

#include "config.h"

int main(int argc, char *argv[]) {
        if (argc == 2 && strneq(argv[1], "--check=", STRLEN("--check="))) {
                _cleanup_(config_freep) Config *c = NULL;
                _cleanup_free_ char *error = NULL;
                char *env[] = { NULL };
                int r;

                r = config_load_from(&c, argv[1] + STRLEN("--check="), true, NULL, NULL, env, &error);
                if (r < 0) {
                        fprintf(stderr, "%s\n", error ?: strerror(-r));
                        return EXIT_FAILURE;
                }
                return EXIT_SUCCESS;
        }
        if (argc != 1) {
                fprintf(stderr, "usage: %s [--check=FILE]\n", argv[0]);
                return 2;
        }

        for (size_t i = 0; i < config_keys_n; i++)
                printf("%s\t%s\t%s\n", config_keys[i].name, config_keys[i].default_value ?: "",
                       config_keys[i].flags & CONFIG_CREDENTIAL ? "credential" : "-");
        return EXIT_SUCCESS;
}
