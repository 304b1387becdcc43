#include "common/validate.h"

#include <gtest/gtest.h>

#include <climits>

namespace gpubroker {
namespace {

TEST(Names, AcceptsPathLikeNames) {
  for (const std::string& n : {std::string("a"), std::string("weights/layer0"), std::string("kv:cache_3"),
                               std::string("A-1.b"), std::string("_x"), std::string(127, 'n')}) {
    EXPECT_TRUE(ValidateName(n).ok()) << n;
  }
}

TEST(Names, RejectsBadNames) {
  for (std::string n : {std::string(), std::string(128, 'n'), std::string("/abs"), std::string("a//b"),
                        std::string("a/"), std::string("a/../b"), std::string(".hidden"),
                        std::string("sp ace"), std::string("tab\t"), std::string("é"),
                        std::string("a\0b", 3), std::string("-flag")}) {
    Status s = ValidateName(n);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << "'" << n << "'";
  }
}

TEST(Shapes, ContiguousStridesAreRowMajor) {
  std::vector<int64_t> shape = {2, 3, 4};
  auto strides = ContiguousStrides(shape);
  ASSERT_TRUE(strides.ok());
  EXPECT_EQ(*strides, (std::vector<int64_t>{12, 4, 1}));
}

TEST(Shapes, ExtentCoversTheLastElement) {
  DType f32{DType::kFloat, 32, 1};
  std::vector<int64_t> shape = {4, 8};
  std::vector<int64_t> strides = {16, 1};  // padded rows
  auto extent = ViewExtentBytes(f32, shape, strides);
  ASSERT_TRUE(extent.ok());
  EXPECT_EQ(*extent, ((4 - 1) * 16 + (8 - 1) + 1) * 4u);
  std::vector<int64_t> empty = {0, 8};
  EXPECT_EQ(*ViewExtentBytes(f32, empty, strides), 0u);
  EXPECT_EQ(*ViewExtentBytes(f32, {}, {}), 4u);  // a scalar
}

TEST(Shapes, RejectsNegativeAndOverflowingLayouts) {
  DType f64{DType::kFloat, 64, 1};
  std::vector<int64_t> neg = {-1};
  std::vector<int64_t> one = {1};
  EXPECT_EQ(ViewExtentBytes(f64, neg, one).status().code(), Code::kInvalidArgument);
  std::vector<int64_t> big = {INT64_MAX, 2};
  std::vector<int64_t> big_strides = {2, 1};
  EXPECT_EQ(ViewExtentBytes(f64, big, big_strides).status().code(), Code::kInvalidArgument);
  std::vector<int64_t> wide = {INT64_MAX};
  std::vector<int64_t> four = {4};
  EXPECT_EQ(ViewExtentBytes(f64, wide, four).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ContiguousStrides(std::vector<int64_t>{1ll << 32, 1ll << 32, 4}).status().code(),
            Code::kInvalidArgument);
  std::vector<int64_t> neg_stride = {-1};
  std::vector<int64_t> two = {2};
  EXPECT_EQ(ViewExtentBytes(f64, two, neg_stride).status().code(), Code::kInvalidArgument);
  std::vector<int64_t> nine(9, 1);
  EXPECT_EQ(ViewExtentBytes(f64, nine, nine).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ViewExtentBytes(f64, two, {}).status().code(), Code::kInvalidArgument);
}

TEST(Shapes, ViewMustFitAndBeAligned) {
  DType i32{DType::kInt, 32, 1};
  std::vector<int64_t> shape = {16};
  std::vector<int64_t> strides = {1};
  EXPECT_TRUE(CheckViewFits(i32, shape, strides, 1024, 1088).ok());
  EXPECT_EQ(CheckViewFits(i32, shape, strides, 1028, 1088).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(CheckViewFits(i32, shape, strides, 1026, 4096).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(CheckViewFits(i32, shape, strides, UINT64_MAX - 3, UINT64_MAX).status().code(),
            Code::kInvalidArgument);
}

TEST(DTypes, ParseAndName) {
  auto bf16 = ParseDType("bfloat16");
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(bf16->code, DType::kBfloat);
  EXPECT_EQ(bf16->bits, 16);
  EXPECT_EQ(DTypeName(*bf16), "bfloat16");
  EXPECT_EQ(ParseDType("float8").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateDType({DType::kFloat, 12, 1}).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateDType({3, 64, 1}).code(), Code::kInvalidArgument);
}

TEST(DeviceUuids, ParseAndFormatRoundTrip) {
  const std::string text = "GPU-a1d6f876-708f-2787-a05e-d22e6235cc19";
  auto uuid = ParseUuid(text);
  ASSERT_TRUE(uuid.ok()) << uuid.status().ToString();
  EXPECT_EQ((*uuid)[0], 0xa1);
  EXPECT_EQ((*uuid)[15], 0x19);
  EXPECT_EQ(FormatUuid(*uuid), text);
  for (const char* bad : {"a1d6f876-708f-2787-a05e-d22e6235cc19", "GPU-a1d6f876708f2787a05ed22e6235cc19",
                          "GPU-a1d6f876-708f-2787-a05e-d22e6235cc1", "GPU-a1d6f876-708f-2787-a05e-d22e6235cc1z",
                          "GPU-a1d6f876-708f-2787-a05e-d22e6235cc1900"}) {
    EXPECT_EQ(ParseUuid(bad).status().code(), Code::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace gpubroker
