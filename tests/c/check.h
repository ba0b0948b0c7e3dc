/*
 * check.h — the mini test harness shared by the C tests: CHECK and CHECK_STATUS count passes and failures
 * and print each failure with its line. Each test program includes it once and ends with
 * check_report(), whose last line is "N passed, N failed".
 */
#ifndef FERRY_TESTS_CHECK_H
#define FERRY_TESTS_CHECK_H

#include <stdio.h>

#include "ferry.h"

static int passed;
static int failed;

static void check_at(int ok, const char* expr, int line) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL line %d: %s\n", line, expr);
    }
}

#define CHECK(cond) check_at((cond) ? 1 : 0, #cond, __LINE__)

/* CHECK_STATUS(call, want): the call returns want, and a failing call leaves a non-empty message
   (FERRY_END_OF_EPOCH is not a failure and needs none). */
#define CHECK_STATUS(call, want) check_status_at((call), (want), #call, __LINE__)

static void check_status_at(ferry_status got, ferry_status want, const char* expr, int line) {
    if (got != want) {
        failed++;
        printf("FAIL line %d: %s returned %s, want %s (last error: %s)\n", line, expr, ferry_status_string(got),
               ferry_status_string(want), ferry_last_error());
        return;
    }
    if (want != FERRY_OK && want != FERRY_END_OF_EPOCH && ferry_last_error()[0] == '\0') {
        failed++;
        printf("FAIL line %d: %s returned %s with an empty ferry_last_error()\n", line, expr, ferry_status_string(got));
        return;
    }
    passed++;
}

#endif
