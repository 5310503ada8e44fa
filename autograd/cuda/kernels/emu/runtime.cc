//go:build cudaemu

// The launcher. The blocks of a grid are shared out among worker OS threads, one block at a
// time each; a worker runs the threads of its block as fibers that take turns: a fiber runs
// until it waits at a barrier (__syncthreads, a warp shuffle) or returns, then the next
// runnable fiber after it resumes. A barrier completes when every thread of its block (warp)
// that has not returned has arrived; the last one to arrive carries on. A fiber is started
// once per launch on a stack of its own with makecontext, then switched with _setjmp and
// _longjmp (no system call per switch); between blocks it waits for the next one.

// _longjmp between stacks is what the fibers are made of; the fortified one rejects it.
#undef _FORTIFY_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"
#include "registry.h"

thread_local uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace cuda_emu {
namespace {

std::map<std::string, Kernel>& kernels() {
    static std::map<std::string, Kernel> m;
    return m;
}

constexpr size_t stack_size = 64 << 10;  // per fiber, below a guard page

enum Wait { running, at_block, at_warp, returned };

struct Fiber {
    jmp_buf env;
    char* stack;
    uint3 idx;
    int lane, parity;  // parity: the set of shuffle slots of its next shuffle
    Wait wait;
};

// Warp is the state of a warp's barrier and its shuffles' slots: two sets used in turn, so a
// lane writes a set again only after every lane has passed the next shuffle, hence has read it.
struct Warp {
    int lanes, live, arrived;
    uint64_t slots[2][32];
};

// Worker runs blocks on one OS thread.
struct Worker {
    jmp_buf home;     // where the worker waits while its block runs
    ucontext_t boot;  // where it waits while it starts a fiber
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    int cur = 0;      // the running fiber
    int live = 0;     // fibers not returned
    int arrived = 0;  // fibers at the block barrier
    const char* name;
    const Kernel* kernel;
    const uint64_t* params;
};

thread_local Worker* worker;

std::mutex launching;  // one launch at a time: blockDim, gridDim and the stacks are global
std::vector<char*> stacks;

char* new_stack() {
    long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, stack_size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
        perror("cuda emulator: allocating a fiber stack");
        abort();
    }
    return (char*)p + page;
}

// switch_to saves the running context in from and resumes the one saved in to.
void switch_to(jmp_buf from, jmp_buf to) {
    if (_setjmp(from) == 0) _longjmp(to, 1);
}

// resume_next switches from the running fiber to the next runnable one, or returns at once
// when that is the running fiber itself; when every fiber has returned, to the worker's home
// (it is resumed for the next block).
void resume_next() {
    Worker& w = *worker;
    int me = w.cur, n = me, threads = (int)w.fibers.size();
    if (w.live == 0) {
        switch_to(w.fibers[me].env, w.home);
        threadIdx = w.fibers[me].idx;
        return;
    }
    do n = (n + 1) % threads;
    while (n != me && w.fibers[n].wait != running);
    if (w.fibers[n].wait != running) {
        fprintf(stderr,
                "cuda emulator: kernel %s, block (%u, %u, %u): every thread waits at a barrier that cannot complete "
                "(a __syncthreads or shuffle that not all threads of the block or warp reach)\n",
                w.name, blockIdx.x, blockIdx.y, blockIdx.z);
        abort();
    }
    if (n == me) return;
    w.cur = n;
    switch_to(w.fibers[me].env, w.fibers[n].env);
    threadIdx = w.fibers[me].idx;
}

// release makes the fibers waiting at the barrier of the block (warp < 0) or of warp runnable.
void release(Worker& w, int warp) {
    Wait at = warp < 0 ? at_block : at_warp;
    int lo = warp < 0 ? 0 : 32 * warp, hi = warp < 0 ? (int)w.fibers.size() : lo + w.warps[warp].lanes;
    for (int t = lo; t < hi; t++)
        if (w.fibers[t].wait == at) w.fibers[t].wait = running;
}

// arrive is the running fiber arriving at the barrier of its block (warp < 0) or its warp.
void arrive(int warp) {
    Worker& w = *worker;
    int& arrived = warp < 0 ? w.arrived : w.warps[warp].arrived;
    if (++arrived == (warp < 0 ? w.live : w.warps[warp].live)) {
        arrived = 0;
        release(w, warp);
        return;
    }
    w.fibers[w.cur].wait = warp < 0 ? at_block : at_warp;
    resume_next();
}

// fiber_loop runs the kernel once per block as thread me of it.
[[noreturn]] void fiber_loop(int me) {
    Worker& w = *worker;
    for (;;) {
        threadIdx = w.fibers[me].idx;
        w.kernel->run(w.params);
        // a returned thread no longer holds back the barriers it has not reached
        w.fibers[me].wait = returned;
        Warp& wp = w.warps[me / 32];
        w.live--;
        wp.live--;
        if (wp.arrived > 0 && wp.arrived == wp.live) {
            wp.arrived = 0;
            release(w, me / 32);
        }
        if (w.arrived > 0 && w.arrived == w.live) {
            w.arrived = 0;
            release(w, -1);
        }
        resume_next();  // returns when the next block starts
    }
}

// fiber_boot is a fiber's start on its own stack: it saves its context and goes back to the
// worker, and enters fiber_loop when first resumed.
void fiber_boot() {
    Worker& w = *worker;
    int me = w.cur;
    if (_setjmp(w.fibers[me].env) == 0) setcontext(&w.boot);
    fiber_loop(me);
}

void start_fibers(Worker& w) {
    ucontext_t start;
    for (size_t t = 0; t < w.fibers.size(); t++) {
        getcontext(&start);
        start.uc_stack.ss_sp = w.fibers[t].stack;
        start.uc_stack.ss_size = stack_size;
        start.uc_link = nullptr;
        makecontext(&start, fiber_boot, 0);
        w.cur = (int)t;
        swapcontext(&w.boot, &start);
    }
}

void run_block(Worker& w, long long b) {
    unsigned gx = gridDim.x, gy = gridDim.y, bx = blockDim.x, by = blockDim.y;
    blockIdx = uint3{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / gx / gy)};
    int threads = (int)w.fibers.size();
    w.live = threads;
    w.arrived = 0;
    for (size_t i = 0; i < w.warps.size(); i++) {
        int lanes = std::min(32, threads - 32 * (int)i);
        w.warps[i] = Warp{lanes, lanes, 0, {}};
    }
    for (int t = 0; t < threads; t++) {
        Fiber& f = w.fibers[t];
        f.idx = uint3{t % bx, t / bx % by, t / (bx * by)};
        f.lane = t & 31;
        f.parity = 0;
        f.wait = running;
    }
    w.cur = 0;
    switch_to(w.home, w.fibers[0].env);
}

}  // namespace

void add_kernel(const char* name, Kernel k) { kernels()[name] = std::move(k); }

void syncthreads() { arrive(-1); }

uint64_t exchange(uint64_t v, int src) {
    Worker& w = *worker;
    Fiber& me = w.fibers[w.cur];
    Warp& wp = w.warps[w.cur / 32];
    uint64_t* s = wp.slots[me.parity];
    me.parity ^= 1;
    s[me.lane] = v;
    arrive(w.cur / 32);
    return src >= 0 && src < wp.lanes ? s[src] : v;
}

}  // namespace cuda_emu

using namespace cuda_emu;

extern "C" {

uintptr_t emu_alloc(int64_t n) {
    size_t size = ((size_t)(n > 0 ? n : 1) + 255) / 256 * 256;  // cudaMalloc's alignment
    void* p = aligned_alloc(256, size);
    if (p) memset(p, 0, size);
    return (uintptr_t)p;
}

void emu_free(uintptr_t p) { free((void*)p); }

int emu_kernel_count() { return (int)kernels().size(); }

const char* emu_kernel_name(int i) { return std::next(kernels().begin(), i)->first.c_str(); }

// emu_kernel_params is the parameter count of kernel name, -1 when there is no such kernel.
int emu_kernel_params(const char* name) {
    auto it = kernels().find(name);
    return it == kernels().end() ? -1 : it->second.params;
}

// emu_launch runs a kernel known to exist, on a valid grid and block, to completion.
void emu_launch(const char* name, const int* grid, const int* block, const uint64_t* params) {
    std::lock_guard<std::mutex> lock(launching);
    const Kernel& k = kernels().at(name);
    gridDim = dim3{(unsigned)grid[0], (unsigned)grid[1], (unsigned)grid[2]};
    blockDim = dim3{(unsigned)block[0], (unsigned)block[1], (unsigned)block[2]};
    int threads = block[0] * block[1] * block[2];
    long long blocks = (long long)grid[0] * grid[1] * grid[2];
    int workers = (int)std::min<long long>({blocks, std::max(1u, std::thread::hardware_concurrency()), 8});
    while (stacks.size() < (size_t)workers * threads) stacks.push_back(new_stack());
    std::atomic<long long> next{0};
    auto work = [&](int i) {
        sigset_t all;  // signals go to the process's other threads, never onto a fiber's stack
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, nullptr);
        Worker w;
        w.name = name;
        w.kernel = &k;
        w.params = params;
        w.fibers.resize(threads);
        w.warps.resize((threads + 31) / 32);
        for (int t = 0; t < threads; t++) w.fibers[t].stack = stacks[(size_t)i * threads + t];
        worker = &w;
        start_fibers(w);
        for (long long b; (b = next++) < blocks;) run_block(w, b);
    };
    std::vector<std::thread> pool;
    for (int i = 0; i < workers; i++) pool.emplace_back(work, i);
    for (auto& t : pool) t.join();
}

}  // extern "C"
