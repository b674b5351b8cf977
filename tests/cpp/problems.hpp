// The problems the tests run: small sizes with small blocks, so that blocking, several
// blocks and both strategies are exercised in milliseconds.
#pragma once

#include <fasth/fasth.hpp>

#include "reference.hpp"

namespace ftest {

// Householder apply: V (batch_v, d, k), X (batch, d, n); batch_v 0: one V for the batch,
// batch 0: no batch dimension.
inline fasth::Problem householder_apply(index_t batch, index_t batch_v, index_t d, index_t k,
                                        index_t n, bool col_major, bool transpose,
                                        index_t block = 0,
                                        fasth::Strategy s = fasth::Strategy::automatic) {
  fasth::Problem p;
  p.V = matrices(batch_v, d, k, col_major);
  p.X = matrices(batch, d, n, col_major);
  p.transpose = transpose;
  p.block = block;
  p.strategy = s;
  return p;
}

inline fasth::Problem householder_matrix(index_t batch, index_t d, index_t k, bool thin,
                                         index_t block = 0) {
  fasth::Problem p;
  p.op = fasth::Op::matrix;
  p.V = matrices(batch, d, k, true);
  p.thin = thin;
  p.block = block;
  return p;
}

// LAPACK reflectors: A (batch, d, c) with k <= c reflectors and tau (batch, k).
inline fasth::Problem lapack(fasth::Op op, index_t batch, index_t d, index_t c, index_t k,
                             index_t n, bool transpose, index_t block = 0) {
  fasth::Problem p;
  p.op = op;
  p.kind = fasth::Kind::lapack;
  p.V = matrices(batch, d, c, true);
  p.tau = vectors(batch, k);
  if (op == fasth::Op::apply) p.X = matrices(batch, d, n, true);
  p.transpose = transpose;
  p.block = block;
  return p;
}

}  // namespace ftest
