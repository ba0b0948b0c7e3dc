// train — a CIFAR-10 classifier trained with libtorch on batches that ferry prefetches to the GPU.
//
// The five data_batch_N.bin files of the CIFAR-10 binary format are read into memory once. ferry shuffles
// them, moves each batch to the GPU (reading the pinned, mapped samples in place when it can) and runs its
// Normalize kernel there: u8 channel planes to normalized float32, with random horizontal flips. Each batch
// field reaches libtorch as a DLPack tensor (at::fromDLPackVersioned) with no copy; ferry's monitor logs the
// loss and the step times and samples the GPU, and writes an HTML report at the end. The test set
// (test_batch.bin) is read through ferry's CIFAR-10 source and scored after training.
//
// Usage: train --data DIR [--epochs 2] [--batch 256] [--lr 0.1] [--seed 0] [--device 0]
//              [--report train_report.html] [--max-steps N]
//
// Build (see bindings/cpp/examples/CMakeLists.txt): find_package(ferry) and find_package(Torch), e.g.
//   cmake -S bindings/cpp/examples -B build/examples
//     -DCMAKE_PREFIX_PATH="<ferry prefix>;$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
// (one command line). Recent libtorch needs C++20 (ferry.hpp needs C++17); libtorch 2.9 or newer has
// at::fromDLPackVersioned.
//
// Exit status: 0 when the loss fell (the last epoch's mean below the first epoch's first steps), 1 when it
// did not, 2 on an error.

// libtorch first: its dlpack.h then defines the DLPack types, and ferry.h uses them instead of its own.
#include <ATen/DLConvertor.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ferry.hpp"

namespace {

constexpr int64_t kRecord = 3073; // a label byte, then 1024 red, 1024 green and 1024 blue bytes
constexpr int64_t kImage = 3072;
const std::vector<float> kMean = {0.4914f, 0.4822f, 0.4465f};
const std::vector<float> kStd = {0.2470f, 0.2435f, 0.2616f};
constexpr double kPi = 3.14159265358979323846;

const char* staging_name(ferry_staging s) {
    switch (s) {
    case FERRY_STAGING_GATHER: return "gather";
    case FERRY_STAGING_DMA: return "dma";
    case FERRY_STAGING_MAPPED: return "mapped";
    default: return "auto";
    }
}

struct Args {
    std::string data;
    int epochs = 2;
    int64_t batch = 256;
    double lr = 0.1;
    uint64_t seed = 0;
    int device = 0;
    std::string report = "train_report.html";
    int64_t max_steps = 0; // 0: no limit
};

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        const std::string k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                throw std::invalid_argument(k + " needs a value");
            }
            return argv[++i];
        };
        if (k == "--data") {
            a.data = value();
        } else if (k == "--epochs") {
            a.epochs = std::stoi(value());
        } else if (k == "--batch") {
            a.batch = std::stoll(value());
        } else if (k == "--lr") {
            a.lr = std::stod(value());
        } else if (k == "--seed") {
            a.seed = std::stoull(value());
        } else if (k == "--device") {
            a.device = std::stoi(value());
        } else if (k == "--report") {
            a.report = value();
        } else if (k == "--max-steps") {
            a.max_steps = std::stoll(value());
        } else {
            throw std::invalid_argument("unknown argument " + k + " (see the usage at the top of train.cpp)");
        }
    }
    if (a.data.empty()) {
        throw std::invalid_argument("--data DIR (a directory in the CIFAR-10 binary format) is required");
    }
    if (a.epochs < 1 || a.batch < 1) {
        throw std::invalid_argument("--epochs and --batch must be at least 1");
    }
    return a;
}

// The training set: data_batch_1.bin .. data_batch_5.bin, those that exist, as channel-planar images and
// labels.
struct Dataset {
    std::vector<uint8_t> images; // [n, 3, 32, 32]
    std::vector<uint8_t> labels; // [n]
    int64_t n = 0;
};

Dataset read_training_set(const std::string& dir) {
    Dataset d;
    for (int k = 1; k <= 5; k++) {
        const std::string path = dir + "/data_batch_" + std::to_string(k) + ".bin";
        std::ifstream f(path, std::ios::binary);
        if (!f) {
            continue;
        }
        std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (bytes.empty() || bytes.size() % kRecord != 0) {
            throw std::runtime_error(path + ": " + std::to_string(bytes.size()) +
                                     " bytes is not a whole number of 3073-byte CIFAR-10 records");
        }
        const int64_t m = static_cast<int64_t>(bytes.size()) / kRecord;
        for (int64_t r = 0; r < m; r++) {
            const char* rec = bytes.data() + r * kRecord;
            d.labels.push_back(static_cast<uint8_t>(rec[0]));
            d.images.insert(d.images.end(), rec + 1, rec + kRecord);
        }
        d.n += m;
    }
    if (d.n == 0) {
        throw std::runtime_error(dir + " holds no data_batch_N.bin file of the CIFAR-10 binary format");
    }
    return d;
}

// A small residual network for 32x32 images (ResNet-9 style: prep, two residual stages, a classifier).
struct ConvBNImpl : torch::nn::Module {
    ConvBNImpl(int64_t in, int64_t out)
        : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1).bias(false)))),
          bn(register_module("bn", torch::nn::BatchNorm2d(out))) {}
    torch::Tensor forward(const torch::Tensor& x) { return torch::relu(bn->forward(conv->forward(x))); }
    torch::nn::Conv2d conv;
    torch::nn::BatchNorm2d bn;
};
TORCH_MODULE(ConvBN);

struct NetImpl : torch::nn::Module {
    NetImpl()
        : prep(register_module("prep", ConvBN(3, 64))), layer1(register_module("layer1", ConvBN(64, 128))),
          res1a(register_module("res1a", ConvBN(128, 128))), res1b(register_module("res1b", ConvBN(128, 128))),
          layer2(register_module("layer2", ConvBN(128, 256))), layer3(register_module("layer3", ConvBN(256, 512))),
          res3a(register_module("res3a", ConvBN(512, 512))), res3b(register_module("res3b", ConvBN(512, 512))),
          fc(register_module("fc", torch::nn::Linear(512, 10))) {}

    torch::Tensor forward(torch::Tensor x) {
        x = prep->forward(x);
        x = torch::max_pool2d(layer1->forward(x), 2);
        x = x + res1b->forward(res1a->forward(x));
        x = torch::max_pool2d(layer2->forward(x), 2);
        x = torch::max_pool2d(layer3->forward(x), 2);
        x = x + res3b->forward(res3a->forward(x));
        x = x.amax({2, 3}); // global max-pool: [n, 512]
        return fc->forward(x) * 0.125;
    }

    ConvBN prep, layer1, res1a, res1b, layer2, layer3, res3a, res3b;
    torch::nn::Linear fc;
};
TORCH_MODULE(Net);

// A batch field as a torch tensor with no copy: the tensor owns the DLPack tensor, whose deleter gives
// ferry its slot back (ordered after the work queued on the consumer stream so far).
torch::Tensor to_torch(const ferry::batch& b, const char* name) {
    ferry::tensor t = b.field(name);
    return at::fromDLPackVersioned(t.release());
}

double mean_of(const std::vector<double>& v, std::size_t from, std::size_t to) {
    to = std::min(to, v.size());
    if (from >= to) {
        return NAN;
    }
    return std::accumulate(v.begin() + static_cast<std::ptrdiff_t>(from), v.begin() + static_cast<std::ptrdiff_t>(to),
                           0.0) /
           static_cast<double>(to - from);
}

// Top-1 accuracy on test_batch.bin, read through ferry's CIFAR-10 source (no flips, in order).
double evaluate(Net& net, const ferry::engine& eng, const std::string& dir, const torch::Device& dev) {
    const std::string path = dir + "/test_batch.bin";
    if (!std::ifstream(path)) {
        return NAN;
    }
    ferry::source test = ferry::source::cifar10(path);
    ferry::iterator it(eng, test,
                       ferry::iterator_options().batch_size(500).add(
                           ferry::transform::normalize("image", kMean, kStd).input_layout(FERRY_LAYOUT_CHW)));
    net->eval();
    torch::NoGradGuard no_grad;
    int64_t correct = 0, seen = 0;
    void* stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
    while (auto b = it.next(stream)) {
        const torch::Tensor x = to_torch(*b, "image");
        const torch::Tensor y = to_torch(*b, "label").to(torch::kLong);
        correct += net->forward(x).argmax(1).eq(y).sum().item<int64_t>();
        seen += b->size();
        b->release(stream);
    }
    net->train();
    return seen > 0 ? static_cast<double>(correct) / static_cast<double>(seen) : NAN;
}

} // namespace

int main(int argc, char** argv) {
    try {
        const Args args = parse(argc, argv);
        if (!torch::cuda::is_available()) {
            std::fprintf(stderr, "train: libtorch sees no CUDA device\n");
            return 2;
        }
        torch::manual_seed(args.seed);
        at::globalContext().setAllowTF32CuBLAS(true);
        at::globalContext().setAllowTF32CuDNN(true);
        at::globalContext().setBenchmarkCuDNN(true);
        const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(args.device));

        const Dataset train = read_training_set(args.data);
        ferry::engine eng(args.device);
        ferry::source src = ferry::source::memory(
            train.n, {ferry::field::of<uint8_t>("image", {3, 32, 32}), ferry::field::of<uint8_t>("label")},
            {train.images.data(), train.labels.data()});
        const auto opts =
            ferry::iterator_options()
                .batch_size(args.batch)
                .shuffle()
                .seed(args.seed)
                .drop_last()
                .add(ferry::transform::normalize("image", kMean, kStd, FERRY_LAYOUT_CHW, FERRY_DTYPE_FLOAT32, 0.5)
                         .input_layout(FERRY_LAYOUT_CHW));
        ferry::iterator it(eng, src, opts);
        const ferry::staging_info staging = it.staging();
        std::printf("train: %lld samples, %lld batches of %lld per epoch, staging %s (%s)\n",
                    static_cast<long long>(train.n), static_cast<long long>(it.size()),
                    static_cast<long long>(args.batch), staging_name(staging.strategy), staging.reason.c_str());

        ferry::monitor mon(ferry::monitor_options().start());
        mon.attach("train", it);
        const ferry::metric m_loss = mon.metric("loss");
        const ferry::metric m_step = mon.metric("step_ms");
        const ferry::metric m_wait = mon.metric("data_wait_ms");
        const ferry::metric m_rate = mon.metric("images_per_s");

        Net net;
        net->to(dev, torch::kFloat32);
        torch::optim::SGD opt(net->parameters(),
                              torch::optim::SGDOptions(args.lr).momentum(0.9).nesterov(true).weight_decay(5e-4));
        const int64_t steps_per_epoch = it.size();
        const int64_t total = args.max_steps > 0 ? std::min(args.max_steps, steps_per_epoch * args.epochs)
                                                 : steps_per_epoch * args.epochs;
        const int64_t warmup = std::max<int64_t>(1, total / 10);

        using clock = std::chrono::steady_clock;
        std::vector<double> losses;
        std::vector<double> epoch_means;
        int64_t step = 0;
        const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(dev.index());
        const auto t_start = clock::now();
        for (int epoch = 0; epoch < args.epochs && step < total; epoch++) {
            const std::size_t first = losses.size();
            double wait_s = 0, loop_s = 0;
            int64_t images = 0;
            auto t0 = clock::now();
            for (;;) {
                if (step >= total) {
                    break;
                }
                const auto w0 = clock::now();
                std::optional<ferry::batch> b = it.next(stream.stream()); // the stream waits for the copy
                if (!b) {
                    break; // the end of the epoch
                }
                const double wait = std::chrono::duration<double>(clock::now() - w0).count();
                const torch::Tensor x = to_torch(*b, "image");
                const torch::Tensor y = to_torch(*b, "label").to(torch::kLong);
                // Warm up linearly, then a cosine to zero.
                const double lr = step < warmup ? args.lr * static_cast<double>(step + 1) / static_cast<double>(warmup)
                                                : 0.5 * args.lr *
                                                      (1 + std::cos(kPi * static_cast<double>(step - warmup) /
                                                                    static_cast<double>(total - warmup)));
                for (auto& g : opt.param_groups()) {
                    static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
                }
                opt.zero_grad();
                torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y);
                loss.backward();
                opt.step();
                const int64_t n = b->size();
                b->release(stream.stream()); // ferry refills the slot after the work queued so far
                const double l = loss.item<double>(); // one sync per step: host times are GPU times
                const auto t1 = clock::now();
                const double step_s = std::chrono::duration<double>(t1 - w0).count();
                losses.push_back(l);
                m_loss.log(l);
                m_step.log(step_s * 1e3);
                m_wait.log(wait * 1e3);
                m_rate.log(static_cast<double>(n) / step_s);
                wait_s += wait;
                images += n;
                step++;
                if (step % 50 == 0) {
                    std::printf("  step %5lld  loss %.4f  lr %.4f\n", static_cast<long long>(step), l, lr);
                }
            }
            loop_s = std::chrono::duration<double>(clock::now() - t0).count();
            epoch_means.push_back(mean_of(losses, first, losses.size()));
            std::printf("epoch %d: %lld steps, loss %.4f, %.0f images/s, data stall %.1f %%\n", epoch,
                        static_cast<long long>(losses.size() - first), epoch_means.back(),
                        static_cast<double>(images) / loop_s, 100.0 * wait_s / loop_s);
        }
        const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();
        const double acc = evaluate(net, eng, args.data, dev);
        mon.write_report(args.report);
        const std::size_t k = std::min<std::size_t>(20, losses.size() / 4 + 1);
        const double first_loss = mean_of(losses, 0, k);
        const double last_loss = mean_of(losses, losses.size() - k, losses.size());
        std::printf("train: %lld steps in %.1f s; loss %.4f (first %zu steps) -> %.4f (last %zu); test accuracy %.4f; "
                    "report %s\n",
                    static_cast<long long>(step), elapsed, first_loss, k, last_loss, k, acc, args.report.c_str());
        if (!(last_loss < first_loss)) {
            std::fprintf(stderr, "train: the loss did not fall\n");
            return 1;
        }
        return 0;
    } catch (const ferry::error& e) {
        std::fprintf(stderr, "train: ferry: %s\n", e.what());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "train: %s\n", e.what());
    }
    return 2;
}
