// Does the DAC's division-free quotient round like the division, for every input?
//
// With noise management the tile's DAC (analog_tile.h, pack_round0) takes a = x * scale, |a| <=
// 1 + 2^-23, to level nearbyint(a / step) without dividing: q = a * y (y = 1 / step, rounded),
// then q + (a - step q) * y, the residual exact in an FMA (Markstein's correction step). This
// tries every float a in [-1.01, 1.01] for the given bound and number of levels (step = bound /
// levels, as Converter computes it) and counts the a whose level differs from the division's
// (exit status 1 if any does), and the a whose corrected quotient is not the division's bit for
// bit (for |a / step| < 1/4, where the level is 0 either way, such a difference would not matter).
//
//     g++ -O2 -march=native -ffp-contract=off -o check_dac_quotient tools/check_dac_quotient.cc
//     ./check_dac_quotient 1 63      # bound 1, 7-bit DAC: about 2 s
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: check_dac_quotient BOUND LEVELS\n");
    return 2;
  }
  volatile float bound = std::strtof(argv[1], nullptr), levels = std::strtof(argv[2], nullptr);
  const float step = bound / levels, y = 1.0f / step;
  uint32_t top;
  const float limit = 1.01f;
  std::memcpy(&top, &limit, sizeof top);
  long tried = 0, quotients = 0, level_errors = 0;
  for (uint32_t sign = 0; sign <= 1; ++sign) {
    for (uint32_t u = 0; u <= top; ++u) {
      const float a = from_bits(u | sign << 31);
      const float division = a / step;
      const float q = a * y, corrected = std::fma(std::fma(-step, q, a), y, q);
      if (corrected != division && std::fabs(division) >= 0.25f) ++quotients;
      if (std::nearbyint(corrected) != std::nearbyint(division)) {
        if (level_errors++ < 5) std::printf("  a = %.9g: level %g, the division's %g\n", a, std::nearbyint(corrected), std::nearbyint(division));
      }
      ++tried;
    }
  }
  std::printf("bound %g, %g levels (step %.9g): %ld floats, %ld quotients of 1/4 or more not the division's, "
              "%ld levels not the division's\n", static_cast<double>(bound), static_cast<double>(levels),
              static_cast<double>(step), tried, quotients, level_errors);
  return level_errors == 0 ? 0 : 1;
}
