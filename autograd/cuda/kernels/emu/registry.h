//go:build cudaemu

// The kernel registry: each k_*.cc compiles one .cu file and registers its kernels by name
// with EMU_KERNEL; Launch finds them there.
#pragma once

#include <stdint.h>
#include <string.h>

#include <functional>
#include <type_traits>
#include <utility>

namespace cuda_emu {

// Kernel is a registered kernel: its parameter count and a thunk that calls it with the
// parameters unpacked from 64-bit slots.
struct Kernel {
    int params;
    std::function<void(const uint64_t*)> run;
};

void add_kernel(const char* name, Kernel k);

// arg is the parameter of type T held in the low bytes of a slot, as cuLaunchKernel reads it.
template <class T>
T arg(uint64_t slot) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t));
    T v;
    memcpy(&v, &slot, sizeof(T));
    return v;
}

template <class... A, size_t... I>
void call(void (*f)(A...), const uint64_t* slots, std::index_sequence<I...>) {
    f(arg<A>(slots[I])...);
}

struct Registrar {
    template <class... A>
    Registrar(const char* name, void (*f)(A...)) {
        add_kernel(name, Kernel{(int)sizeof...(A), [f](const uint64_t* slots) {
                                    call(f, slots, std::index_sequence_for<A...>{});
                                }});
    }
};

}  // namespace cuda_emu

// EMU_KERNEL registers kernel name, declared in namespace ns.
#define EMU_KERNEL(ns, name) static cuda_emu::Registrar emu_kernel_##name(#name, ns::name);
