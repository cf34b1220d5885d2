// Shared by the native unit tests: a failure counter and a CHECK macro that reports and counts
// instead of aborting, so one run lists every failure.
#pragma once

#include <cstdio>

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        g_checks++;                                                   \
        if (!(cond)) {                                                \
            std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            std::fprintf(stderr, __VA_ARGS__);                        \
            std::fprintf(stderr, "\n");                               \
            g_failures++;                                             \
        }                                                             \
    } while (0)
