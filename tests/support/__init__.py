"""Helpers shared by the tests and the benchmarks in tools/ (CPython only).

harness      a real anchor process, rovers on both runtimes, trees and their comparison
services     an HTTP origin and a mosquitto broker on loopback
powerloss    the anchor SIGKILLed at random points (tests/e2e and tools/bench_powerloss.py)
linkemu      the link emulator: a counting TCP relay and a pty serial line with faults
kinds        every kind of link behind one interface, for the conformance suite
memory_link  an in-memory packet link
inproc       an anchor in this process, on a loop thread
ble_bumble   a BLE link on bumble's virtual controllers
fuzz_targets the fuzz targets of tests/fuzz and tools/bench_fuzz.py
"""
