// The main of every GoogleTest binary of the suite. It ends with one line of
// counts, and its exit status tells ctest what happened:
//   0   every case that ran passed, and none skipped
//   1   a case failed, or no case ran at all (a filter that matched nothing)
//   77  nothing failed but some case skipped: ctest reports the binary as
//       Skipped (SKIP_RETURN_CODE), never as Passed
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  const int passed = unit.successful_test_count();
  const int skipped = unit.skipped_test_count();
  const int failed = unit.failed_test_count();
  std::string name = argv[0];
  name = name.substr(name.find_last_of('/') + 1);
  std::printf("%s: %d passed, %d failed, %d skipped\n", name.c_str(), passed, failed, skipped);
  std::fflush(stdout);
  if (rc != 0 || failed > 0) return 1;
  if (passed + skipped == 0) {
    std::fprintf(stderr, "%s: no test ran\n", name.c_str());
    return 1;
  }
  return skipped > 0 ? 77 : 0;
}
