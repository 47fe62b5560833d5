/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* Language runners: how a program of each language is laid out in the working directory,
 * built and run inside the sandbox. Pure data; the sandbox does the running. */

typedef enum Language {
        LANGUAGE_CSHARP = 0, /* the numbers are the compat wire values */
        LANGUAGE_PYTHON = 1,
        _LANGUAGE_MAX,
        _LANGUAGE_INVALID = -EINVAL,
} Language;

/* "CSharp", "Python": the API's names. */
const char *language_to_string(Language l);
/* Case-insensitive "CSharp"/"Python" (also "C#", "cs", "py"), or "0"/"1". */
Language language_from_string(const char *s);

typedef struct RunnerSettings {
        const char *python_path;      /* default /usr/bin/python3 */
        const char *csharp_toolchain; /* "mono" (default) or "dotnet" */
        const char *mcs_path;         /* default /usr/bin/mcs */
        const char *mono_path;        /* default /usr/bin/mono */
        const char *dotnet_path;      /* default /usr/bin/dotnet */
} RunnerSettings;

typedef struct Runner {
        Language language;
        const char *toolchain;    /* "python", "mono", "dotnet" */
        const char *source_name;  /* the program's file in the working directory */
        const char *extra_name;   /* another file the build needs (dotnet: main.csproj), or NULL */
        const char *extra_content;
        char **compile_argv;      /* NULL: nothing to build */
        char **artifacts;         /* files the build leaves for the run step (and the cache) */
        char **run_argv;
        char **ro_binds;          /* host paths bound read-only at the same place, besides /usr */
        char **env;               /* "NAME=value", added to the sandbox's minimal environment */
        char *toolchain_id;       /* changes whenever the toolchain does; part of the cache key */
} Runner;

/* Checks the toolchain's binaries (absolute, executable, under /usr: the only host tree the
 * sandbox sees) and builds the command lines. Errors explained in *ret_error. */
int runner_new(Language language, const RunnerSettings *s, Runner **ret, char **ret_error);
Runner *runner_free(Runner *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(Runner *, runner_free);
