"""Runs test modules with unittest and reports as the C++ tests do: one line
of counts, then exit 0 (all ran and passed), 1 (a failure or error, or no test
at all) or 77 (none failed, some skipped: ctest shows Skipped, not Passed).

    python3 runner.py test_host [test_other ...]
"""
import sys
import unittest


def main(modules):
    suite = unittest.defaultTestLoader.loadTestsFromNames(modules)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print(f"{'+'.join(modules)}: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    if failed or result.testsRun == 0:
        return 1
    return 77 if skipped else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
