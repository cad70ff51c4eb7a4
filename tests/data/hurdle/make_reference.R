# Reference fits for omixed's detection (count) component, tests/test_hurdle.py.
# msqrob2's msqrobGlm model: glm.fit(cbind(c, n - c) + 0.1, X, family = binomial()), dispersion
# deviance / df.residual.  Run from the repository root:
#   Rscript tests/data/hurdle/make_reference.R
counts <- read.csv("tests/data/hurdle/counts.csv")
design <- read.csv("tests/data/hurdle/design.csv")
X <- model.matrix(~ condition + batch, design)
out <- list()
for (f in unique(counts$feature)) {
  d <- counts[counts$feature == f, ]
  d <- d[match(design$sample, d$sample), ]
  y <- cbind(d$detected, d$peptides - d$detected) + 0.1
  fit <- glm.fit(X, y, family = binomial())
  p <- fit$rank
  cov <- chol2inv(fit$qr$qr[1:p, 1:p, drop = FALSE])
  out[[f]] <- data.frame(
    feature = f, term = colnames(X), coef = unname(fit$coefficients),
    se_unscaled = sqrt(diag(cov)), deviance = fit$deviance, df_residual = fit$df.residual
  )
}
write.csv(do.call(rbind, out), "tests/data/hurdle/glm_reference.csv", row.names = FALSE)
