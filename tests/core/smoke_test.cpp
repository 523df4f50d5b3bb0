#include <gtest/gtest.h>

#include "dsattn/core/dtype.h"

TEST(Smoke, Bf16RoundTrip) { EXPECT_EQ(dsattn::bf16::from_float(1.0f).bits, 0x3f80); }
