// The unit tests' one assertion: counts checks and failures and keeps going, so one run reports every
// failure; each test's main() prints the totals and returns non-zero on any failure.
#pragma once

#include <stdio.h>

static int g_failures = 0;
static long g_checks = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    ++g_checks;                                                                \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)
