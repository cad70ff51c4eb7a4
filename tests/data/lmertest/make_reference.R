# Build lmerTest (Satterthwaite) reference fixtures for omixed's tests. See README.md here.
#
# Usage, from the repository root:
#   setarch -R Rscript tests/data/lmertest/make_reference.R [reference_dir] [out_dir]
# (setarch -R turns off address randomisation; see README.md for why)
# Defaults: /work/shared/reference and tests/data/lmertest.
#
# Every model is fitted by REML with lmerTest::lmer (lme4's default optimizer). Before writing,
# the REML criteria are compared with the independent lme4 references in reference_dir, so the
# fixtures are known to describe the same fits.

suppressPackageStartupMessages({
  library(lmerTest)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
ref_dir <- if (length(args) >= 1) args[[1]] else "/work/shared/reference"
out_dir <- if (length(args) >= 2) args[[2]] else "tests/data/lmertest"
n_genes <- 40
n_proteins <- 30

# Contrasts tested with contest(): each non-intercept coefficient alone (1 df), and all
# coefficients jointly (multi-df Satterthwaite F test) when there are at least two.
contrasts_for <- function(beta_names) {
  p <- length(beta_names)
  out <- list()
  for (j in which(beta_names != "(Intercept)")) {
    out[[beta_names[j]]] <- matrix(as.numeric(seq_len(p) == j), nrow = 1)
  }
  if (p >= 2) out[[paste(beta_names, collapse = "+")]] <- diag(p)
  out
}

# Fit one model; collect lme4/lmerTest warnings and messages (singular fits, Hessian
# eigenvalues) instead of printing them, because they explain odd df on boundary fits.
fit_one <- function(formula, data) {
  notes <- character()
  withCallingHandlers(
    {
      fit <- lmerTest::lmer(formula, data = data, REML = TRUE)
      coefs <- summary(fit)$coefficients
      contrasts <- contrasts_for(rownames(coefs))
      tests <- lapply(contrasts, function(L) contest(fit, L, joint = TRUE))
    },
    warning = function(w) {
      notes <<- c(notes, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      notes <<- c(notes, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
  list(
    coefficients = data.frame(
      term = rownames(coefs), estimate = coefs[, "Estimate"], se = coefs[, "Std. Error"],
      df = coefs[, "df"], t = coefs[, "t value"], p = coefs[, "Pr(>|t|)"], row.names = NULL
    ),
    contests = do.call(rbind, lapply(names(tests), function(name) {
      ct <- tests[[name]]
      data.frame(
        contrast = name, L = paste(t(contrasts[[name]]), collapse = ";"),
        numdf = ct[["NumDF"]], dendf = ct[["DenDF"]], F = ct[["F value"]], p = ct[["Pr(>F)"]]
      )
    })),
    fit = list(
      nobs = nobs(fit), crit = REMLcrit(fit), sigma = sigma(fit),
      theta = as.list(getME(fit, "theta")), singular = isSingular(fit),
      varpar = c(names(getME(fit, "theta")), "sigma"), vcov_varpar = fit@vcov_varpar,
      notes = I(unique(notes))
    )
  )
}

fit_features <- function(formula, long, n) {
  features <- head(unique(long$feature), n)
  lapply(setNames(features, features), function(f) fit_one(formula, long[long$feature == f, ]))
}

classic <- fromJSON(file.path(ref_dir, "lme4_classic.json"), simplifyVector = FALSE)
results <- list()
formulas <- list()
for (model in names(classic)) {
  formulas[[model]] <- classic[[model]]$formula
  data <- read.csv(file.path(ref_dir, classic[[model]]$data))
  results[[model]] <- setNames(list(fit_one(as.formula(formulas[[model]]), data)), model)
}
sim <- list(
  sim_genes = list(n = n_genes, formula = "y ~ condition + (1|batch) + (1|donor)"),
  sim_peptides = list(n = n_proteins, formula = "y ~ condition + (1|batch) + (1|sample) + (1|peptide)")
)
for (model in names(sim)) {
  formulas[[model]] <- sim[[model]]$formula
  long <- read.csv(file.path(ref_dir, paste0(model, ".csv")), colClasses = c(feature = "character"))
  results[[model]] <- fit_features(as.formula(formulas[[model]]), long, sim[[model]]$n)
}

# Self-check against the independent lme4 references.
crit_ref <- list()
for (model in names(classic)) crit_ref[[model]] <- setNames(classic[[model]]$REML$criterion, model)
for (model in names(sim)) {
  ref <- read.csv(file.path(ref_dir, paste0(model, "_lme4.csv")), colClasses = "character")
  ref <- ref[ref$term == "crit", ]
  crit_ref[[model]] <- setNames(as.numeric(ref$value), ref$feature)
}
for (model in names(results)) {
  crit <- vapply(results[[model]], function(r) r$fit$crit, numeric(1))
  diff <- max(abs(crit - crit_ref[[model]][names(crit)]))
  cat(sprintf("%-24s %3d fits, max |REMLcrit - lme4 reference| = %.2e\n", model, length(crit), diff))
  if (!is.finite(diff) || diff > 1e-4) stop("REML criterion disagrees with the lme4 reference")
}

stack_table <- function(part) {
  do.call(rbind, unlist(lapply(names(results), function(model) {
    lapply(names(results[[model]]), function(feature) {
      tab <- results[[model]][[feature]][[part]]
      if (is.null(tab) || nrow(tab) == 0) return(NULL)
      cbind(data.frame(model = model, feature = feature), tab)
    })
  }), recursive = FALSE))
}
write.csv(stack_table("coefficients"), file.path(out_dir, "coefficients.csv"), row.names = FALSE)
write.csv(stack_table("contests"), file.path(out_dir, "contests.csv"), row.names = FALSE)

fits <- lapply(names(results), function(model) {
  list(
    formula = formulas[[model]],
    fits = lapply(results[[model]], function(r) r$fit)
  )
})
meta <- list(
  R = R.version.string,
  lme4 = format(packageVersion("lme4")),
  lmerTest = format(packageVersion("lmerTest")),
  Matrix = format(packageVersion("Matrix")),
  numDeriv = format(packageVersion("numDeriv")),
  command = "setarch -R Rscript tests/data/lmertest/make_reference.R"
)
write_json(
  list(meta = meta, models = setNames(fits, names(results))),
  file.path(out_dir, "fits.json"),
  auto_unbox = TRUE, digits = NA, pretty = TRUE
)
