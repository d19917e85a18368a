// Where the analog tile's time goes, step by step (tools/bench_kernels.py --steps). A build with
// -DANALOG_STEP_CLOCK counts the time-stamp counter's ticks in each step of TileBlock, per thread,
// and exports the sums; any other build runs timed(step, f) as plain f(). (perf's sampling gives
// next to nothing on some virtual machines; these counters work wherever the build runs.)
#pragma once

#include <cstddef>

#if defined(ANALOG_STEP_CLOCK)
#include <x86intrin.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>
#endif

namespace analog {

// The steps of TileBlock (analog_tile.h), in the order they run.
enum class Step : size_t { kRead, kAbsMax, kPack, kProduct, kNoise, kConvert, kRerunPack, kWrite, kCount };

#if defined(ANALOG_STEP_CLOCK)
constexpr size_t kSteps = static_cast<size_t>(Step::kCount);

// One thread's ticks per step (written by that thread only; read by step_ticks).
struct StepTicks {
  std::atomic<uint64_t> ticks[kSteps] = {};
};

struct StepClock {
  std::mutex mutex;
  std::vector<std::unique_ptr<StepTicks>> threads;
};
inline StepClock& step_clock() {
  static StepClock clock;
  return clock;
}
inline StepTicks& thread_ticks() {
  thread_local StepTicks* mine = [] {
    StepClock& clock = step_clock();
    std::lock_guard<std::mutex> lock(clock.mutex);
    clock.threads.push_back(std::make_unique<StepTicks>());
    return clock.threads.back().get();
  }();
  return *mine;
}
// The ticks of `step` summed over threads; reset sets every count to 0.
inline uint64_t step_ticks(size_t step, bool reset) {
  StepClock& clock = step_clock();
  std::lock_guard<std::mutex> lock(clock.mutex);
  uint64_t sum = 0;
  for (auto& thread : clock.threads) sum += reset ? thread->ticks[step].exchange(0) : thread->ticks[step].load();
  return sum;
}

template <typename F>
inline decltype(auto) timed(Step step, F&& f) {
  struct Count {
    std::atomic<uint64_t>& ticks;
    uint64_t start;
    ~Count() { ticks.store(ticks.load(std::memory_order_relaxed) + (__rdtsc() - start), std::memory_order_relaxed); }
  } count{thread_ticks().ticks[static_cast<size_t>(step)], __rdtsc()};
  return f();
}
#else
template <typename F>
inline decltype(auto) timed(Step, F&& f) {
  return f();
}
#endif

}  // namespace analog
