"""The occupancy arithmetic and SASS loop parsing of benchmarks/kernel_stats.py (its
compiling needs triton; this does not)."""

from __future__ import annotations

import unittest

from benchmarks.kernel_stats import ARCHS, blocks_per_sm, hot_loop_per_step, loop_bodies

# nvdisasm -c layout: an outer loop (.L_x_1) holding an inner one (.L_x_2), a forward
# branch that is not a loop, and the trap self-branch after EXIT.
NESTED_LOOPS_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
.L_x_2:
        /*0020*/                   FFMA R3, R2, R3, R5 ;
        /*0030*/                   MUFU.EX2 R6, R3 ;
        /*0040*/              @P0 BRA `(.L_x_2) ;
        /*0050*/              @!P1 BRA `(.L_x_3) ;
        /*0060*/                   SHFL.BFLY PT, R7, R6, 0x1, 0x1f ;
.L_x_3:
        /*0070*/               @P2 BRA `(.L_x_1) ;
        /*0080*/                   EXIT ;
.L_x_4:
        /*0090*/                   BRA `(.L_x_4);
"""


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


class LoopBodiesTest(unittest.TestCase):
    def test_nested_loops_count_their_own_instructions(self):
        outer, inner = loop_bodies(NESTED_LOOPS_SASS)
        # The inner body: FFMA, MUFU and its branch. The outer: LDG, the forward branch,
        # SHFL and its own branch; the inner loop's instructions are not counted again.
        self.assertEqual(inner["instructions"], 3)
        self.assertEqual((inner["sass"]["FFMA"], inner["sass"]["MUFU"]), (1, 1))
        self.assertEqual(outer["instructions"], 4)
        self.assertEqual((outer["sass"]["LDG"], outer["sass"]["SHFL"], outer["sass"]["FFMA"]), (1, 1, 0))

    def test_hot_loop_per_step_scales_by_warps_over_segment(self):
        row = {"warps": 2, "loops": loop_bodies(NESTED_LOOPS_SASS)}
        self.assertEqual(hot_loop_per_step(row, seg=4), 4 * 2 / 4)


if __name__ == "__main__":
    unittest.main()
