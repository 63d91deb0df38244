// cuda_emu_cusolver.cpp: the few cuSOLVER dense calls this project uses, on the
// CPU, with the real cusolverDn.h signatures (see README.md for the harness).
//
// Implemented: cusolverDnCreate/Destroy, cusolverDnSet/GetStream,
// cusolverDn{S,D}syevd_bufferSize and cusolverDn{S,D}syevd (symmetric
// eigendecomposition), cusolverDnDsyevdx_bufferSize and cusolverDnDsyevdx (a
// selection of eigenpairs), cusolverDnD{geqrf,orgqr}{_bufferSize,} (QR, below),
// cusolverDnCreateParams/DestroyParams and cusolverDnXsyevBatched{_bufferSize,}
// (a batch of symmetric eigenproblems, at the end).
// Anything else is a link error, as with the rest of the harness.
//
// syevdx, as documented: range CUSOLVER_EIG_RANGE_ALL (all n), _I (the il-th
// through the iu-th smallest, 1-based, 1 <= il <= iu <= n) or _V (those in the
// half-open interval (vl, vu]); *meig (host memory) is how many were found, W
// holds them ascending in its first *meig entries, and with
// CUSOLVER_EIG_MODE_VECTOR the first *meig columns of A their eigenvectors.
// Here the selection is cut from the whole Jacobi decomposition.
//
// syevd follows NVIDIA's documented semantics: A (n, n) column-major with
// leading dimension lda; only the triangle named by uplo is read; on return
// W holds the eigenvalues in ascending order and, with CUSOLVER_EIG_MODE_VECTOR,
// column j of A holds the unit eigenvector of W[j] (A is overwritten either
// way); *info (device memory) is 0 on success, -i when argument i is invalid,
// and i > 0 when the solver did not converge: i off-diagonal elements stayed
// nonzero (cuSOLVER counts those of its tridiagonal form, Jacobi those of the
// full iterate). A NaN or Inf in A never converges, so it gives i > 0 too.
// The solver is cyclic Jacobi in double (accurate to ~1e-15 relative to ||A||,
// slow: O(n^3) per sweep; meant for the small sizes of tests). Eigenvector
// signs are whatever Jacobi gives, which is as arbitrary as cuSOLVER's: callers
// must fix a sign convention themselves.
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <numeric>
#include <vector>

namespace cuda_emu {
bool is_device_range(const void* p, size_t n);
}

struct cusolverDnContext {
  cudaStream_t stream;
};

// a workspace of this many elements is asked for, so that callers that skip the
// query (or pass a smaller lwork) are caught as on a GPU
#define CUSOLVER_EMU_WORK_PER_N 2
#define JACOBI_MAX_SWEEPS 100

extern "C" {

cusolverStatus_t CUSOLVERAPI cusolverDnCreate(cusolverDnHandle_t* handle) {
  if (handle == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *handle = new cusolverDnContext{0};
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDestroy(cusolverDnHandle_t handle) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnSetStream(cusolverDnHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnGetStream(cusolverDnHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"

static int syevd_lwork(int n) { return n < 1 ? 1 : CUSOLVER_EMU_WORK_PER_N * n; }

static void syevd_check_device(const char* api, const char* what, const void* p, size_t bytes) {
  if (!cuda_emu::is_device_range(p, bytes)) {
    fprintf(stderr, "cuda_emu: %s: %s (%p, %zu bytes) is not inside one live device allocation\n",
            api, what, p, bytes);
    abort();
  }
}

// eigenvalues ascending into W, eigenvectors into the columns of A; a is the
// symmetric matrix in double, row i column j at a[i * n + j]. returns 0, or
// when JACOBI_MAX_SWEEPS did not converge, the number (>= 1) of off-diagonal
// pairs left above the convergence threshold (NaN counts as above)
static int jacobi_eigen(std::vector<double>& a, int n, std::vector<double>& evals, std::vector<double>& evecs) {
  std::vector<double> v((size_t)n * n, 0.0);
  for (int i = 0; i < n; i++) v[(size_t)i * n + i] = 1.0;
  int left = 0;
  for (int sweep = 0; sweep <= JACOBI_MAX_SWEEPS; sweep++) {
    double off = 0.0, total = 0.0;
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < n; j++) {
        double x = a[(size_t)i * n + j] * a[(size_t)i * n + j];
        total += x;
        if (i != j) off += x;
      }
    }
    if (off <= 1e-32 * total || off == 0.0) break;
    if (sweep == JACOBI_MAX_SWEEPS) {  // the test after the last sweep failed
      double pair_limit = 1e-32 * total / ((double)n * (n - 1));
      for (int i = 0; i < n; i++) {
        for (int j = i + 1; j < n; j++) {
          double x = a[(size_t)i * n + j];
          if (!(x * x <= pair_limit)) left++;
        }
      }
      if (left == 0) left = 1;
      break;
    }
    for (int p = 0; p < n - 1; p++) {
      for (int q = p + 1; q < n; q++) {
        double apq = a[(size_t)p * n + q];
        if (apq == 0.0) continue;
        double app = a[(size_t)p * n + p], aqq = a[(size_t)q * n + q];
        double theta = (aqq - app) / (2.0 * apq);
        double t = (theta >= 0.0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
        double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
        // A <- J^T A J with the rotation in the (p, q) plane
        for (int k = 0; k < n; k++) {
          double akp = a[(size_t)k * n + p], akq = a[(size_t)k * n + q];
          a[(size_t)k * n + p] = c * akp - s * akq;
          a[(size_t)k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; k++) {
          double apk = a[(size_t)p * n + k], aqk = a[(size_t)q * n + k];
          a[(size_t)p * n + k] = c * apk - s * aqk;
          a[(size_t)q * n + k] = s * apk + c * aqk;
        }
        a[(size_t)p * n + q] = 0.0;
        a[(size_t)q * n + p] = 0.0;
        for (int k = 0; k < n; k++) {
          double vkp = v[(size_t)k * n + p], vkq = v[(size_t)k * n + q];
          v[(size_t)k * n + p] = c * vkp - s * vkq;
          v[(size_t)k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return a[(size_t)x * n + x] < a[(size_t)y * n + y]; });
  evals.resize(n);
  evecs.resize((size_t)n * n);
  for (int j = 0; j < n; j++) {
    evals[j] = a[(size_t)order[j] * n + order[j]];
    for (int i = 0; i < n; i++) evecs[(size_t)j * n + i] = v[(size_t)i * n + order[j]];  // column j
  }
  return left;
}

template <class T>
static cusolverStatus_t syevd(const char* api, cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                              cublasFillMode_t uplo, int n, T* A, int lda, T* W, T* work, int lwork, int* info) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  int bad = 0;
  if (jobz != CUSOLVER_EIG_MODE_NOVECTOR && jobz != CUSOLVER_EIG_MODE_VECTOR) bad = -2;
  else if (uplo != CUBLAS_FILL_MODE_LOWER && uplo != CUBLAS_FILL_MODE_UPPER) bad = -3;
  else if (n < 0) bad = -4;
  else if (lda < (n > 1 ? n : 1)) bad = -6;
  else if (lwork < syevd_lwork(n)) bad = -9;
  syevd_check_device(api, "info", info, sizeof(int));
  if (bad != 0) {
    fprintf(stderr, "cuda_emu: %s: parameter %d is invalid\n", api, -bad);
    *info = bad;
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  if (n == 0) {
    *info = 0;
    return CUSOLVER_STATUS_SUCCESS;
  }
  syevd_check_device(api, "A", A, ((size_t)(n - 1) * lda + n) * sizeof(T));
  syevd_check_device(api, "W", W, (size_t)n * sizeof(T));
  syevd_check_device(api, "work", work, (size_t)lwork * sizeof(T));
  std::vector<double> a((size_t)n * n);
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < n; i++) {
      // only the named triangle is read: (i, j) with i >= j (lower) or i <= j (upper)
      bool lower = uplo == CUBLAS_FILL_MODE_LOWER;
      int r = (lower ? i >= j : i <= j) ? i : j, c = (lower ? i >= j : i <= j) ? j : i;
      a[(size_t)i * n + j] = (double)A[r + (size_t)c * lda];
    }
  }
  // the workspace is scribbled on, as a GPU solver would
  for (int i = 0; i < lwork; i++) work[i] = (T)NAN;
  std::vector<double> evals, evecs;
  int unconverged = jacobi_eigen(a, n, evals, evecs);
  for (int j = 0; j < n; j++) {
    W[j] = (T)evals[j];
    for (int i = 0; i < n; i++) {
      A[i + (size_t)j * lda] = jobz == CUSOLVER_EIG_MODE_VECTOR ? (T)evecs[(size_t)j * n + i] : (T)NAN;
    }
  }
  // as cuSOLVER: a solver that did not converge still returns success; only devInfo says so
  *info = unconverged;
  return CUSOLVER_STATUS_SUCCESS;
}

static int syevdx_lwork(int n) { return n < 1 ? 1 : CUSOLVER_EMU_WORK_PER_N * n + 1; }

static cusolverStatus_t syevdx(const char* api, cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                               cusolverEigRange_t range, cublasFillMode_t uplo, int n, double* A, int lda, double vl,
                               double vu, int il, int iu, int* meig, double* W, double* work, int lwork, int* info) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  int bad = 0;
  if (jobz != CUSOLVER_EIG_MODE_NOVECTOR && jobz != CUSOLVER_EIG_MODE_VECTOR) bad = -2;
  else if (range != CUSOLVER_EIG_RANGE_ALL && range != CUSOLVER_EIG_RANGE_I && range != CUSOLVER_EIG_RANGE_V) bad = -3;
  else if (uplo != CUBLAS_FILL_MODE_LOWER && uplo != CUBLAS_FILL_MODE_UPPER) bad = -4;
  else if (n < 0) bad = -5;
  else if (lda < (n > 1 ? n : 1)) bad = -7;
  else if (range == CUSOLVER_EIG_RANGE_V && !(vl < vu)) bad = -9;
  else if (range == CUSOLVER_EIG_RANGE_I && n > 0 && (il < 1 || il > n)) bad = -10;
  else if (range == CUSOLVER_EIG_RANGE_I && n > 0 && (iu < il || iu > n)) bad = -11;
  else if (meig == nullptr) bad = -12;
  else if (lwork < syevdx_lwork(n)) bad = -15;
  syevd_check_device(api, "info", info, sizeof(int));
  if (bad != 0) {
    fprintf(stderr, "cuda_emu: %s: parameter %d is invalid\n", api, -bad);
    *info = bad;
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  *meig = 0;
  if (n == 0) {
    *info = 0;
    return CUSOLVER_STATUS_SUCCESS;
  }
  int unconverged = syevd(api, handle, jobz, uplo, n, A, lda, W, work, lwork, info);
  if (unconverged != CUSOLVER_STATUS_SUCCESS) return (cusolverStatus_t)unconverged;
  int first = 0, count = n;  // the selection, in ascending order
  if (range == CUSOLVER_EIG_RANGE_I) {
    first = il - 1;
    count = iu - il + 1;
  } else if (range == CUSOLVER_EIG_RANGE_V) {
    while (first < n && !(W[first] > vl)) first++;
    count = 0;
    while (first + count < n && W[first + count] <= vu) count++;
  }
  // move the selected pairs to the front; the columns past them are scribbled on
  for (int j = 0; j < count; j++) {
    W[j] = W[first + j];
    if (first > 0) {
      for (int i = 0; i < n; i++) A[i + (size_t)j * lda] = A[i + (size_t)(first + j) * lda];
    }
  }
  for (int j = count; j < n; j++) {
    W[j] = NAN;
    for (int i = 0; i < n; i++) A[i + (size_t)j * lda] = NAN;
  }
  *meig = count;
  return CUSOLVER_STATUS_SUCCESS;
}

extern "C" {

cusolverStatus_t CUSOLVERAPI cusolverDnDsyevdx_bufferSize(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                                          cusolverEigRange_t range, cublasFillMode_t uplo, int n,
                                                          const double* A, int lda, double vl, double vu, int il,
                                                          int iu, int* meig, const double* W, int* lwork) {
  (void)jobz; (void)range; (void)uplo; (void)A; (void)lda; (void)vl; (void)vu; (void)il; (void)iu; (void)meig;
  (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (lwork == nullptr || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = syevdx_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDsyevdx(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                               cusolverEigRange_t range, cublasFillMode_t uplo, int n, double* A,
                                               int lda, double vl, double vu, int il, int iu, int* meig, double* W,
                                               double* work, int lwork, int* info) {
  return syevdx("cusolverDnDsyevdx", handle, jobz, range, uplo, n, A, lda, vl, vu, il, iu, meig, W, work, lwork,
                info);
}

cusolverStatus_t CUSOLVERAPI cusolverDnDsyevd_bufferSize(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                                         cublasFillMode_t uplo, int n, const double* A, int lda,
                                                         const double* W, int* lwork) {
  (void)jobz; (void)uplo; (void)A; (void)lda; (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (lwork == nullptr || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = syevd_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnSsyevd_bufferSize(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                                         cublasFillMode_t uplo, int n, const float* A, int lda,
                                                         const float* W, int* lwork) {
  (void)jobz; (void)uplo; (void)A; (void)lda; (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (lwork == nullptr || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = syevd_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDsyevd(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                              cublasFillMode_t uplo, int n, double* A, int lda, double* W,
                                              double* work, int lwork, int* info) {
  return syevd("cusolverDnDsyevd", handle, jobz, uplo, n, A, lda, W, work, lwork, info);
}

cusolverStatus_t CUSOLVERAPI cusolverDnSsyevd(cusolverDnHandle_t handle, cusolverEigMode_t jobz,
                                              cublasFillMode_t uplo, int n, float* A, int lda, float* W,
                                              float* work, int lwork, int* info) {
  return syevd("cusolverDnSsyevd", handle, jobz, uplo, n, A, lda, W, work, lwork, info);
}

}  // extern "C"

// geqrf and orgqr, as NVIDIA documents them (cuSOLVER's dense LAPACK-style
// QR, the semantics of LAPACK's dgeqrf and dorgqr):
//   geqrf(m, n, A, lda, TAU, work, lwork, devInfo): A (m, n) column-major = Q R;
//     on return R is on and above the diagonal, and below it the Householder
//     vectors: Q = H(0) H(1) ... H(k-1), k = min(m, n), H(i) = I - TAU[i] v v^T
//     with v[0:i] = 0, v[i] = 1 and v[i+1:m] in A[i+1:m, i].
//   orgqr(m, n, k, A, lda, tau, work, lwork, devInfo), m >= n >= k >= 0: the
//     first n columns of H(0) ... H(k-1), from geqrf's output, overwrite A.
//   *devInfo (device memory) is 0, or -i when argument i is invalid (with
//   CUSOLVER_STATUS_INVALID_VALUE). They do not fail on a finite matrix.
// The reflectors follow LAPACK's dlarfg: beta = -sign(alpha) ||(alpha, x)||,
// tau = (beta - alpha) / beta, v = x / (alpha - beta); tau = 0 (H = I) when x
// is zero. Unblocked (dgeqr2, dorg2r), in double; the workspace is scribbled on.
static int qr_lwork(int n) { return n < 1 ? 1 : CUSOLVER_EMU_WORK_PER_N * n; }

static cusolverStatus_t qr_invalid(const char* api, int* info, int arg) {
  syevd_check_device(api, "devInfo", info, sizeof(int));
  fprintf(stderr, "cuda_emu: %s: parameter %d is invalid\n", api, arg);
  *info = -arg;
  return CUSOLVER_STATUS_INVALID_VALUE;
}

extern "C" {

cusolverStatus_t CUSOLVERAPI cusolverDnDgeqrf_bufferSize(cusolverDnHandle_t handle, int m, int n, double* A, int lda,
                                                         int* lwork) {
  (void)A; (void)lda;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (lwork == nullptr || m < 0 || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = qr_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDgeqrf(cusolverDnHandle_t handle, int m, int n, double* A, int lda,
                                              double* TAU, double* work, int lwork, int* info) {
  const char* api = "cusolverDnDgeqrf";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (m < 0) return qr_invalid(api, info, 2);
  if (n < 0) return qr_invalid(api, info, 3);
  if (lda < (m > 1 ? m : 1)) return qr_invalid(api, info, 5);
  if (lwork < qr_lwork(n)) return qr_invalid(api, info, 8);
  syevd_check_device(api, "devInfo", info, sizeof(int));
  int k = m < n ? m : n;
  if (k == 0) { *info = 0; return CUSOLVER_STATUS_SUCCESS; }
  syevd_check_device(api, "A", A, ((size_t)(n - 1) * lda + m) * sizeof(double));
  syevd_check_device(api, "TAU", TAU, (size_t)k * sizeof(double));
  syevd_check_device(api, "work", work, (size_t)lwork * sizeof(double));
  for (int i = 0; i < lwork; i++) work[i] = NAN;
  for (int j = 0; j < k; j++) {
    double* x = A + (size_t)j * lda + j;  // column j from row j, (m - j,)
    int len = m - j;
    double xnorm2 = 0.0;
    for (int i = 1; i < len; i++) xnorm2 += x[i] * x[i];
    double alpha = x[0];
    if (xnorm2 == 0.0) { TAU[j] = 0.0; continue; }
    double beta = -copysign(sqrt(alpha * alpha + xnorm2), alpha);
    TAU[j] = (beta - alpha) / beta;
    double scale = 1.0 / (alpha - beta);
    for (int i = 1; i < len; i++) x[i] *= scale;
    x[0] = beta;
    for (int c = j + 1; c < n; c++) {  // H(j) on the columns to the right
      double* y = A + (size_t)c * lda + j;
      double s = y[0];
      for (int i = 1; i < len; i++) s += x[i] * y[i];
      s *= TAU[j];
      y[0] -= s;
      for (int i = 1; i < len; i++) y[i] -= s * x[i];
    }
  }
  *info = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDorgqr_bufferSize(cusolverDnHandle_t handle, int m, int n, int k,
                                                         const double* A, int lda, const double* tau, int* lwork) {
  (void)A; (void)lda; (void)tau;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (lwork == nullptr || m < 0 || n < 0 || n > m || k < 0 || k > n) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = qr_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDorgqr(cusolverDnHandle_t handle, int m, int n, int k, double* A, int lda,
                                              const double* tau, double* work, int lwork, int* info) {
  const char* api = "cusolverDnDorgqr";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (m < 0) return qr_invalid(api, info, 2);
  if (n < 0 || n > m) return qr_invalid(api, info, 3);
  if (k < 0 || k > n) return qr_invalid(api, info, 4);
  if (lda < (m > 1 ? m : 1)) return qr_invalid(api, info, 6);
  if (lwork < qr_lwork(n)) return qr_invalid(api, info, 9);
  syevd_check_device(api, "devInfo", info, sizeof(int));
  if (n == 0) { *info = 0; return CUSOLVER_STATUS_SUCCESS; }
  syevd_check_device(api, "A", A, ((size_t)(n - 1) * lda + m) * sizeof(double));
  if (k > 0) syevd_check_device(api, "tau", tau, (size_t)k * sizeof(double));
  syevd_check_device(api, "work", work, (size_t)lwork * sizeof(double));
  for (int i = 0; i < lwork; i++) work[i] = NAN;
  // columns k..n-1 start as those of the identity (dorg2r)
  for (int c = k; c < n; c++) {
    for (int i = 0; i < m; i++) A[(size_t)c * lda + i] = i == c ? 1.0 : 0.0;
  }
  for (int j = k - 1; j >= 0; j--) {
    double* v = A + (size_t)j * lda + j;
    int len = m - j;
    for (int c = j + 1; c < n; c++) {
      double* y = A + (size_t)c * lda + j;
      double s = y[0];
      for (int i = 1; i < len; i++) s += v[i] * y[i];
      s *= tau[j];
      y[0] -= s;
      for (int i = 1; i < len; i++) y[i] -= s * v[i];
    }
    for (int i = 1; i < len; i++) v[i] *= -tau[j];
    v[0] = 1.0 - tau[j];
    for (int i = 0; i < j; i++) A[(size_t)j * lda + i] = 0.0;
  }
  *info = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"

// the 64-bit generic API's batched eigensolver, as NVIDIA documents it:
//   cusolverDnXsyevBatched(handle, params, jobz, uplo, n, dataTypeA, A, lda,
//     dataTypeW, W, computeType, bufferOnDevice, workspaceInBytesOnDevice,
//     bufferOnHost, workspaceInBytesOnHost, info, batchSize)
// computes the eigenpairs of batchSize symmetric n x n matrices packed one after
// another: matrix k's element (i, j) is A[i + lda j + lda n k] (column-major,
// leading dimension lda >= max(1, n)), only the uplo triangle read; its
// eigenvalues, ascending, are W[j + n k], and with CUSOLVER_EIG_MODE_VECTOR
// column j of matrix k then holds the unit eigenvector of W[j + n k] (A is
// overwritten either way). info is an array of batchSize ints in device
// memory: on CUSOLVER_STATUS_INVALID_VALUE, info[0] = -i for the invalid
// argument i; otherwise info[k] = 0, or > 0 when matrix k did not converge. the
// workspaces are the sizes cusolverDnXsyevBatched_bufferSize returns (device,
// and host memory). types: real, A, W and the compute type alike; the harness
// does CUDA_R_64F and CUDA_R_32F (and the pair 32F data / 64F compute is not
// accepted: NOT_SUPPORTED). params: from cusolverDnCreateParams.
// Each matrix is solved alone by the Jacobi solver above, in double.

struct cusolverDnParams {
  int magic;
};
#define PARAMS_MAGIC 0x5e7a

static size_t syev_batched_device_bytes(int64_t n, int64_t batch, size_t elem) {
  return (size_t)(n < 1 ? 1 : CUSOLVER_EMU_WORK_PER_N * n) * (size_t)(batch < 1 ? 1 : batch) * elem;
}
static size_t syev_batched_host_bytes(int64_t n) { return (size_t)(n < 1 ? 1 : n) * sizeof(double); }

static bool syev_batched_types(cudaDataType a, cudaDataType w, cudaDataType c) {
  return (a == CUDA_R_64F || a == CUDA_R_32F) && w == a && c == a;
}

extern "C" {

cusolverStatus_t CUSOLVERAPI cusolverDnCreateParams(cusolverDnParams_t* params) {
  if (params == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *params = new cusolverDnParams{PARAMS_MAGIC};
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDestroyParams(cusolverDnParams_t params) {
  if (params == nullptr || params->magic != PARAMS_MAGIC) return CUSOLVER_STATUS_INVALID_VALUE;
  params->magic = 0;
  delete params;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnXsyevBatched_bufferSize(
    cusolverDnHandle_t handle, cusolverDnParams_t params, cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n,
    cudaDataType dataTypeA, const void* A, int64_t lda, cudaDataType dataTypeW, const void* W,
    cudaDataType computeType, size_t* workspaceInBytesOnDevice, size_t* workspaceInBytesOnHost, int64_t batchSize) {
  (void)jobz; (void)uplo; (void)A; (void)lda; (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (params == nullptr || params->magic != PARAMS_MAGIC) return CUSOLVER_STATUS_INVALID_VALUE;
  if (workspaceInBytesOnDevice == nullptr || workspaceInBytesOnHost == nullptr || n < 0 || batchSize < 0) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  if (!syev_batched_types(dataTypeA, dataTypeW, computeType)) return CUSOLVER_STATUS_NOT_SUPPORTED;
  size_t elem = dataTypeA == CUDA_R_64F ? sizeof(double) : sizeof(float);
  *workspaceInBytesOnDevice = syev_batched_device_bytes(n, batchSize, elem);
  *workspaceInBytesOnHost = syev_batched_host_bytes(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnXsyevBatched(
    cusolverDnHandle_t handle, cusolverDnParams_t params, cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n,
    cudaDataType dataTypeA, void* A, int64_t lda, cudaDataType dataTypeW, void* W, cudaDataType computeType,
    void* bufferOnDevice, size_t workspaceInBytesOnDevice, void* bufferOnHost, size_t workspaceInBytesOnHost,
    int* info, int64_t batchSize) {
  const char* api = "cusolverDnXsyevBatched";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  int bad = 0;
  if (params == nullptr || params->magic != PARAMS_MAGIC) bad = 2;
  else if (jobz != CUSOLVER_EIG_MODE_NOVECTOR && jobz != CUSOLVER_EIG_MODE_VECTOR) bad = 3;
  else if (uplo != CUBLAS_FILL_MODE_LOWER && uplo != CUBLAS_FILL_MODE_UPPER) bad = 4;
  else if (n < 0) bad = 5;
  else if (lda < (n > 1 ? n : 1)) bad = 8;
  else if (batchSize < 0) bad = 17;
  if (bad == 0 && !syev_batched_types(dataTypeA, dataTypeW, computeType)) {
    fprintf(stderr, "cuda_emu: %s: unsupported types (A %d, W %d, compute %d; the harness does CUDA_R_64F or "
            "CUDA_R_32F throughout)\n", api, (int)dataTypeA, (int)dataTypeW, (int)computeType);
    return CUSOLVER_STATUS_NOT_SUPPORTED;
  }
  size_t elem = dataTypeA == CUDA_R_64F ? sizeof(double) : sizeof(float);
  if (bad == 0 && workspaceInBytesOnDevice < syev_batched_device_bytes(n, batchSize, elem)) bad = 13;
  else if (bad == 0 && workspaceInBytesOnHost < syev_batched_host_bytes(n)) bad = 15;
  syevd_check_device(api, "info", info, (size_t)(batchSize > 0 ? batchSize : 1) * sizeof(int));
  if (bad != 0) {
    fprintf(stderr, "cuda_emu: %s: parameter %d is invalid\n", api, bad);
    info[0] = -bad;
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  if (n == 0 || batchSize == 0) {
    for (int64_t k = 0; k < batchSize; k++) info[k] = 0;
    return CUSOLVER_STATUS_SUCCESS;
  }
  syevd_check_device(api, "A", A, ((size_t)(lda * n) * (batchSize - 1) + (size_t)(n - 1) * lda + n) * elem);
  syevd_check_device(api, "W", W, (size_t)(n * batchSize) * elem);
  syevd_check_device(api, "bufferOnDevice", bufferOnDevice, workspaceInBytesOnDevice);
  if (bufferOnHost == nullptr) {
    fprintf(stderr, "cuda_emu: %s: bufferOnHost is NULL but %zu bytes of host workspace are needed\n", api,
            syev_batched_host_bytes(n));
    abort();
  }
  if (cuda_emu::is_device_range(bufferOnHost, 1)) {
    fprintf(stderr, "cuda_emu: %s: bufferOnHost (%p) is device memory; it must be host memory\n", api, bufferOnHost);
    abort();
  }
  // the workspaces are scribbled on, as a GPU solver would
  memset(bufferOnDevice, 0xff, workspaceInBytesOnDevice);
  memset(bufferOnHost, 0xff, syev_batched_host_bytes(n));
  bool lower = uplo == CUBLAS_FILL_MODE_LOWER;
  for (int64_t k = 0; k < batchSize; k++) {
    size_t base = (size_t)(lda * n * k);
    std::vector<double> a((size_t)(n * n));
    for (int64_t j = 0; j < n; j++) {
      for (int64_t i = 0; i < n; i++) {
        bool in = lower ? i >= j : i <= j;
        int64_t r = in ? i : j, c = in ? j : i;
        size_t at = base + (size_t)(r + c * lda);
        a[(size_t)(i * n + j)] = dataTypeA == CUDA_R_64F ? ((double*)A)[at] : (double)((float*)A)[at];
      }
    }
    std::vector<double> evals, evecs;
    int unconverged = jacobi_eigen(a, (int)n, evals, evecs);
    for (int64_t j = 0; j < n; j++) {
      size_t wat = (size_t)(j + n * k);
      if (dataTypeW == CUDA_R_64F) ((double*)W)[wat] = evals[(size_t)j];
      else ((float*)W)[wat] = (float)evals[(size_t)j];
      for (int64_t i = 0; i < n; i++) {
        size_t at = base + (size_t)(i + j * lda);
        double v = jobz == CUSOLVER_EIG_MODE_VECTOR ? evecs[(size_t)(j * n + i)] : NAN;
        if (dataTypeA == CUDA_R_64F) ((double*)A)[at] = v;
        else ((float*)A)[at] = (float)v;
      }
    }
    info[k] = unconverged;
  }
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"
