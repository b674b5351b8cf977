// The families of problems that the forward and backward tests run, each in T with or
// without gradients.
#pragma once

#include <string>

#include "problems.hpp"
#include "runner.hpp"

namespace ftest {

// Householder apply and matrix: both layouts, U and U^T, one and several blocks, both
// strategies, k below, at and above d, and k = 0.
template <class T>
void householder_cases(bool grads, double tol) {
  using fasth::Strategy;
  unsigned seed = 10;
  for (bool col : {true, false})
    for (bool tr : {false, true})
      for (fasth::index_t block : {1, 3, 0})
        for (Strategy s : {Strategy::blockwise, Strategy::materialize})
          check_problem<T>(householder_apply(0, 0, 8, 7, 3, col, tr, block, s), grads, tol,
                           ++seed, "apply col_major=" + std::to_string(col) + " transpose=" +
                                       std::to_string(tr) + " block=" + std::to_string(block) +
                                       " strategy=" + std::to_string(int(s)));
  check_problem<T>(householder_apply(0, 0, 5, 9, 2, true, false, 2), grads, tol, ++seed,
                   "apply k > d");
  check_problem<T>(householder_apply(0, 0, 5, 0, 2, true, true), grads, tol, ++seed,
                   "apply k = 0");
  for (bool thin : {false, true})
    for (fasth::index_t k : {4, 9})
      for (fasth::index_t block : {2, 0})
        check_problem<T>(householder_matrix(0, 7, k, thin, block), grads, tol, ++seed,
                         "matrix k=" + std::to_string(k) + " thin=" + std::to_string(thin) +
                             " block=" + std::to_string(block));
}

// LAPACK reflectors with tau: apply (U and U^T, ormqr-style) and householder_product.
template <class T>
void lapack_cases(bool grads, double tol) {
  unsigned seed = 50;
  for (bool tr : {false, true})
    for (fasth::index_t block : {2, 0})
      check_problem<T>(lapack(fasth::Op::apply, 0, 8, 6, 5, 3, tr, block), grads, tol, ++seed,
                       "lapack apply transpose=" + std::to_string(tr) +
                           " block=" + std::to_string(block));
  for (fasth::index_t c : {4, 7})
    for (fasth::index_t block : {2, 0})
      check_problem<T>(lapack(fasth::Op::matrix, 0, 7, c, 4, 0, false, block), grads, tol,
                       ++seed, "householder_product c=" + std::to_string(c) +
                                   " block=" + std::to_string(block));
}

// Batches: a V per entry, one V shared by the batch (its gradient summed), and LAPACK's.
template <class T>
void batched_cases(bool grads, double tol) {
  unsigned seed = 90;
  for (fasth::index_t batch_v : {3, 0})
    for (fasth::index_t block : {2, 0})
      for (bool tape : {false, true})
        check_problem<T>(householder_apply(3, batch_v, 7, 5, 2, true, false, block), grads,
                         tol, ++seed,
                         "batched apply batch_v=" + std::to_string(batch_v) + " block=" +
                             std::to_string(block) + " tape=" + std::to_string(tape),
                         tape);
  check_problem<T>(householder_matrix(3, 6, 4, true, 2), grads, tol, ++seed, "batched thin");
  check_problem<T>(lapack(fasth::Op::apply, 2, 6, 4, 4, 3, true, 2), grads, tol, ++seed,
                   "batched lapack apply");
  check_problem<T>(lapack(fasth::Op::matrix, 2, 6, 5, 3, 0, false, 2), grads, tol, ++seed,
                   "batched householder_product");
}

}  // namespace ftest
