"""The occupancy arithmetic of benchmarks/kernel_stats.py (its compiling needs triton; this does not)."""

from __future__ import annotations

import unittest

from benchmarks.kernel_stats import ARCHS, blocks_per_sm


class OccupancyTest(unittest.TestCase):
    def test_register_limited(self):
        hopper = ARCHS["sm_90"]
        # 248 registers round to 7936 per warp: 65536 // 7936 = 8 one-warp programs.
        self.assertEqual(blocks_per_sm(hopper, 248, 1), 8)
        self.assertEqual(blocks_per_sm(hopper, 168, 1), 12)  # 5376 per warp
        self.assertEqual(blocks_per_sm(hopper, 255, 2), 4)  # 8192 per warp, two warps each
        # A warp's registers must fit in one of 4 partitions of 16384: 116 registers (3712 per
        # warp) allow 4 warps per partition, 16 programs, not the 17 that 65536 / 3712 suggests.
        self.assertEqual(blocks_per_sm(hopper, 116, 1), 16)
        # 204 x 32 = 6528 is allocated as 6656: 2 warps per partition, 8 programs.
        self.assertEqual(blocks_per_sm(hopper, 204, 1), 8)

    def test_shared_memory_limited(self):
        # 48 KiB per program plus 1 KiB reserved: two fit in the RTX 4090's 100 KiB.
        self.assertEqual(blocks_per_sm(ARCHS["sm_89"], 32, 1, shared=48 << 10), 2)

    def test_slot_limited(self):
        # Few registers: the SM's block slots (32 on Hopper, 16 on sm_86) or warp slots bind.
        self.assertEqual(blocks_per_sm(ARCHS["sm_90"], 32, 1), 32)
        self.assertEqual(blocks_per_sm(ARCHS["sm_86"], 32, 1), 16)
        self.assertEqual(blocks_per_sm(ARCHS["sm_89"], 32, 4), 12)  # 48 warps / 4


if __name__ == "__main__":
    unittest.main()
