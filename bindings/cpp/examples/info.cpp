// info — prints the devices ferry sees and a memory check.
//
// It uses a GPU engine on device 0 when there is a device, and the CPU engine otherwise.
// Usage: info [device]   (device -1 selects the CPU engine)

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "ferry.hpp"

namespace {

double gib(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

void print_snapshot(const char* what, const ferry_memory_snapshot& s) {
    std::printf("%s (sequence %llu, age %.3f ms%s)\n", what, static_cast<unsigned long long>(s.sequence),
                static_cast<double>(s.age_ns) / 1e6, (s.flags & FERRY_MEMORY_F_LIVE) ? ", live" : "");
    if (s.flags & FERRY_MEMORY_F_DEVICE) {
        std::printf("  device %d: %.2f GiB used of %.2f GiB, %.2f GiB free\n", s.device, gib(s.device_used_bytes),
                    gib(s.device_total_bytes), gib(s.device_free_bytes));
    }
    if (s.flags & FERRY_MEMORY_F_PROCESS) {
        std::printf("  this process on the device: %.2f GiB\n", gib(s.process_device_bytes));
    }
    if (s.flags & FERRY_MEMORY_F_HOST) {
        std::printf("  host: %.2f GiB available of %.2f GiB\n", gib(s.host_available_bytes), gib(s.host_total_bytes));
    }
}

} // namespace

int main(int argc, char** argv) {
    try {
        const auto v = ferry::version();
        std::printf("ferry %d.%d.%d (header %d.%d.%d)\n", v.major, v.minor, v.patch, FERRY_VERSION_MAJOR,
                    FERRY_VERSION_MINOR, FERRY_VERSION_PATCH);

        const auto sys = ferry::system_info();
        std::printf("CUDA driver: %s\n", (sys.flags & FERRY_SYSTEM_F_CUDA) ? "loaded" : sys.cuda_status);
        if (sys.flags & FERRY_SYSTEM_F_CUDA) {
            std::printf("  CUDA driver API %d.%d\n", sys.cuda_driver_version / 1000,
                        (sys.cuda_driver_version % 1000) / 10);
        }
        std::printf("NVML: %s\n", (sys.flags & FERRY_SYSTEM_F_NVML) ? sys.driver_version : sys.nvml_status);

        const int n = ferry::device_count();
        std::printf("%d CUDA device(s)\n", n);
        for (int i = 0; i < n; ++i) {
            const auto p = ferry::device_info(i);
            std::printf("  [%d] %s, cc %d.%d, %d SMs, %.2f GiB, %s, %s\n", p.index, p.name, p.compute_capability_major,
                        p.compute_capability_minor, p.multiprocessor_count, gib(p.total_memory_bytes), p.pci_bus_id,
                        p.uuid_string);
            if (p.flags & FERRY_DEVICE_F_PCIE) {
                std::printf("      PCIe gen %d x%d (max gen %d x%d)\n", p.pcie_generation_current, p.pcie_width_current,
                            p.pcie_generation_max, p.pcie_width_max);
            }
        }

        const int device = argc > 1 ? std::atoi(argv[1]) : (n > 0 ? 0 : FERRY_DEVICE_CPU);
        ferry::engine e(device);
        std::printf("engine on %s\n", e.device() == FERRY_DEVICE_CPU ? "the CPU" : "a GPU");
        print_snapshot("memory check", e.memory_check());
        print_snapshot("live memory check", e.memory_check_live());
        return 0;
    } catch (const ferry::error& err) {
        std::fprintf(stderr, "info: %s\n", err.what());
        return 1;
    } catch (const std::exception& err) {
        std::fprintf(stderr, "info: %s\n", err.what());
        return 1;
    }
}
