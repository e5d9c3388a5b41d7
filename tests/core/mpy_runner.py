# Runs core test modules under MicroPython, where pytest does not exist.
# Usage: micropython -X heapsize=256K tests/core/mpy_runner.py FIRMWARE_DIR TESTS_DIR MODULE...
# Each module's test_* functions are called with no arguments; the last line is
# the plain "N passed, M failed" summary that pytest's wrapper reads.
import sys
import gc

firmware, here = sys.argv[1], sys.argv[2]
sys.path.insert(0, here)
sys.path.insert(0, firmware)

passed = 0
failed = 0
for name in sys.argv[3:]:
    mod = __import__(name)
    for attr in sorted(dir(mod)):
        if not attr.startswith("test_"):
            continue
        fn = getattr(mod, attr)
        try:
            fn()
            passed += 1
            print("PASS", name, attr)
        except Exception as e:
            failed += 1
            print("FAIL", name, attr, repr(e))
            sys.print_exception(e)
        gc.collect()
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
