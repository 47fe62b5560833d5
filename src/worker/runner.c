/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <sys/stat.h>

#include "json-util.h"
#include "runner.h"

/* Bump when the build command changes in a way that changes the artifacts. */
#define CSHARP_BUILD_GENERATION "1"

static const char *const language_names[_LANGUAGE_MAX] = {
        [LANGUAGE_CSHARP] = "CSharp",
        [LANGUAGE_PYTHON] = "Python",
};

const char *language_to_string(Language l) {
        return l >= 0 && l < _LANGUAGE_MAX ? language_names[l] : NULL;
}

Language language_from_string(const char *s) {
        if (!s)
                return _LANGUAGE_INVALID;
        if (strcaseeq(s, "CSharp") || strcaseeq(s, "C#") || strcaseeq(s, "cs") || streq(s, "0"))
                return LANGUAGE_CSHARP;
        if (strcaseeq(s, "Python") || strcaseeq(s, "py") || streq(s, "1"))
                return LANGUAGE_PYTHON;
        return _LANGUAGE_INVALID;
}

static char **strv_new(const char *first, ...) _sentinel_;
static char **strv_new(const char *first, ...) {
        va_list ap;
        size_t n = 0;
        char **l;

        va_start(ap, first);
        for (const char *s = first; s; s = va_arg(ap, const char *))
                n++;
        va_end(ap);

        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return NULL;

        n = 0;
        va_start(ap, first);
        for (const char *s = first; s; s = va_arg(ap, const char *)) {
                l[n] = strdup(s);
                if (!l[n]) {
                        va_end(ap);
                        return strv_free(l);
                }
                n++;
        }
        va_end(ap);
        return l;
}

static int error_set(char **ret_error, int error, const char *format, ...) _printf_(3, 4);
static int error_set(char **ret_error, int error, const char *format, ...) {
        va_list ap;

        if (!ret_error)
                return error;
        errno = abs(error);
        va_start(ap, format);
        if (vasprintf(ret_error, format, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return error;
}

/* The binary must be absolute, under /usr (the sandbox sees /usr only) and executable. */
static int check_binary(const char *key, const char *path, struct stat *ret_st, char **ret_error) {
        if (isempty(path) || path[0] != '/')
                return error_set(ret_error, -EINVAL, "%s=%s: must be an absolute path", key, strempty(path));
        if (!strneq(path, "/usr/", 5) || strstr(path, "/../"))
                return error_set(ret_error, -EINVAL,
                                 "%s=%s: must be under /usr/, the only host tree visible in the sandbox", key, path);
        if (access(path, X_OK) < 0)
                return error_set(ret_error, -errno, "%s=%s: not an executable: %m", key, path);
        if (stat(path, ret_st) < 0)
                return error_set(ret_error, -errno, "%s=%s: %m", key, path);
        if (!S_ISREG(ret_st->st_mode))
                return error_set(ret_error, -EINVAL, "%s=%s: not a regular file", key, path);
        return 0;
}

static int append_stat(char **id, const char *path, const struct stat *st) {
        char *n;

        if (asprintf(&n, "%s%s:%llu:%llu:%lld.%09ld;", strempty(*id), path, (unsigned long long) st->st_ino,
                     (unsigned long long) st->st_size, (long long) st->st_mtim.tv_sec, st->st_mtim.tv_nsec) < 0)
                return -ENOMEM;
        free(*id);
        *id = n;
        return 0;
}

Runner *runner_free(Runner *r) {
        if (!r)
                return NULL;
        strv_free(r->compile_argv);
        strv_free(r->artifacts);
        strv_free(r->run_argv);
        strv_free(r->ro_binds);
        strv_free(r->env);
        free(r->toolchain_id);
        return mfree(r);
}

static int runner_python(Runner *r, const RunnerSettings *s, char **ret_error) {
        const char *python = s->python_path ?: "/usr/bin/python3";
        struct stat st;
        int k;

        k = check_binary("PYTHON_PATH", python, &st, ret_error);
        if (k < 0)
                return k;

        r->toolchain = "python";
        r->source_name = "main.py";
        /* -I: isolated (no user site, no PYTHON* variables, script dir not trusted) */
        r->run_argv = strv_new(python, "-I", "main.py", NULL);
        r->env = strv_new("PYTHONDONTWRITEBYTECODE=1", NULL);
        r->ro_binds = strv_new(NULL, NULL);
        if (!r->run_argv || !r->env || !r->ro_binds)
                return -ENOMEM;
        return append_stat(&r->toolchain_id, python, &st);
}

static int runner_mono(Runner *r, const RunnerSettings *s, char **ret_error) {
        const char *mcs = s->mcs_path ?: "/usr/bin/mcs", *mono = s->mono_path ?: "/usr/bin/mono";
        struct stat st;
        int k;

        r->toolchain = "mono";
        r->source_name = "main.cs";
        r->toolchain_id = strdup("mono:" CSHARP_BUILD_GENERATION ";");
        if (!r->toolchain_id)
                return -ENOMEM;

        k = check_binary("MCS_PATH", mcs, &st, ret_error);
        if (k < 0)
                return k;
        k = append_stat(&r->toolchain_id, mcs, &st);
        if (k < 0)
                return k;
        k = check_binary("MONO_PATH", mono, &st, ret_error);
        if (k < 0)
                return k;
        k = append_stat(&r->toolchain_id, mono, &st);
        if (k < 0)
                return k;
        /* Debian's mcs is a shell script around this assembly: the compiler proper */
        if (stat("/usr/lib/mono/4.5/mcs.exe", &st) >= 0) {
                k = append_stat(&r->toolchain_id, "/usr/lib/mono/4.5/mcs.exe", &st);
                if (k < 0)
                        return k;
        }

        /* The source first: mcs takes options anywhere, and the order is part of the cache key. */
        r->compile_argv = strv_new(mcs, "main.cs", "-out:main.exe", "-optimize+", "-r:System.Numerics.dll", NULL);
        r->artifacts = strv_new("main.exe", NULL);
        r->run_argv = strv_new(mono, "main.exe", NULL);
        /* machine.config and the dll maps */
        r->ro_binds = strv_new("/etc/mono", NULL);
        r->env = strv_new(NULL, NULL);
        if (!r->compile_argv || !r->artifacts || !r->run_argv || !r->ro_binds || !r->env)
                return -ENOMEM;
        return 0;
}

/* Untested sketch: no .NET SDK is packaged in Debian. The SDK's bundled targeting packs make
 * "dotnet build" of a project without package references work offline. */
static int runner_dotnet(Runner *r, const RunnerSettings *s, char **ret_error) {
        const char *dotnet = s->dotnet_path ?: "/usr/bin/dotnet";
        struct stat st;
        int k;

        k = check_binary("DOTNET_PATH", dotnet, &st, ret_error);
        if (k < 0)
                return k;

        r->toolchain = "dotnet";
        r->source_name = "main.cs";
        r->extra_name = "main.csproj";
        r->extra_content =
                "<Project Sdk=\"Microsoft.NET.Sdk\">\n"
                "  <PropertyGroup>\n"
                "    <OutputType>Exe</OutputType>\n"
                "    <TargetFramework>net$(BundledNETCoreAppTargetFrameworkVersion)</TargetFramework>\n"
                "    <AssemblyName>main</AssemblyName>\n"
                "    <ImplicitUsings>disable</ImplicitUsings>\n"
                "    <Nullable>disable</Nullable>\n"
                "    <UseAppHost>false</UseAppHost>\n"
                "  </PropertyGroup>\n"
                "</Project>\n";
        r->toolchain_id = strdup("dotnet:" CSHARP_BUILD_GENERATION ";");
        if (!r->toolchain_id)
                return -ENOMEM;
        k = append_stat(&r->toolchain_id, dotnet, &st);
        if (k < 0)
                return k;

        r->compile_argv = strv_new(dotnet, "build", "main.csproj", "--nologo", "-c", "Release", "-o", ".",
                                   "-nodeReuse:false", "-v:q", NULL);
        r->artifacts = strv_new("main.dll", "main.runtimeconfig.json", NULL);
        r->run_argv = strv_new(dotnet, "main.dll", NULL);
        r->ro_binds = strv_new(NULL, NULL);
        r->env = strv_new("DOTNET_CLI_TELEMETRY_OPTOUT=1", "DOTNET_NOLOGO=1", "DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1",
                          "DOTNET_CLI_HOME=/work", "NUGET_PACKAGES=/work/.nuget", "MSBUILDDISABLENODEREUSE=1",
                          "DOTNET_gcServer=0", NULL);
        if (!r->compile_argv || !r->artifacts || !r->run_argv || !r->ro_binds || !r->env)
                return -ENOMEM;
        return 0;
}

int runner_new(Language language, const RunnerSettings *s, Runner **ret, char **ret_error) {
        _cleanup_(runner_freep) Runner *r = NULL;
        int k;

        r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->language = language;

        switch (language) {
        case LANGUAGE_PYTHON:
                k = runner_python(r, s, ret_error);
                break;
        case LANGUAGE_CSHARP:
                if (isempty(s->csharp_toolchain) || strcaseeq(s->csharp_toolchain, "mono"))
                        k = runner_mono(r, s, ret_error);
                else if (strcaseeq(s->csharp_toolchain, "dotnet"))
                        k = runner_dotnet(r, s, ret_error);
                else
                        k = error_set(ret_error, -EINVAL, "CSHARP_TOOLCHAIN=%s: must be 'mono' or 'dotnet'",
                                      s->csharp_toolchain);
                break;
        default:
                return -EINVAL;
        }
        if (k < 0)
                return k;

        *ret = TAKE_PTR(r);
        return 0;
}
