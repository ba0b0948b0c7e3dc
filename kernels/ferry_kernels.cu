// The one translation unit of the fatbin: every kernel source, so that one module holds every kernel.
#include "gather.cu"
#include "image.cu"
#include "crop.cu"
#include "ycc.cu"
#include "pad.cu"
#include "tokens.cu"
