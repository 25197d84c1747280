'use strict'
// Test-only bridge to the TypeScript reference implementation of BRC-52 (@bsv/sdk).
//
// Usage: node sdk_ops.cjs <path to the installed node_modules/@bsv/sdk>
// stdin:  one JSON object {"op": "<name>", "args": {...}}
// stdout: one JSON object, {"ok": true, "result": {...}} or
//         {"ok": false, "error": "<message>", "name": "<Error class>", "stack": "..."}
// Exit status is 0 in both cases; anything else means the bridge itself broke.
//
// JSON conventions follow BRC-52: type and serialNumber base64 (32 bytes), subject/certifier
// compressed public keys in hex, revocationOutpoint "<txid>.<vout>", fields and keyrings
// {name: base64}, signature DER hex. Private keys are 32-byte hex strings.

const path = require('node:path')

const sdkRoot = process.argv[2]
if (!sdkRoot) {
  process.stderr.write('usage: node sdk_ops.cjs <path to node_modules/@bsv/sdk>\n')
  process.exit(2)
}
const src = path.join(sdkRoot, 'dist', 'cjs', 'src')
const load = (rel) => require(path.join(src, rel))
const { default: PrivateKey } = load('primitives/PrivateKey.js')
const Utils = load('primitives/utils.js')
const { default: ProtoWallet } = load('wallet/ProtoWallet.js')
const { default: Certificate } = load('auth/certificates/Certificate.js')
const { MasterCertificate } = load('auth/certificates/MasterCertificate.js')
const { VerifiableCertificate } = load('auth/certificates/VerifiableCertificate.js')
const { default: Transaction } = load('transaction/Transaction.js')

function need (args, name) {
  if (args[name] === undefined || args[name] === null) {
    throw new Error(`missing argument: ${name}`)
  }
  return args[name]
}

function privateKey (hex, name) {
  if (typeof hex !== 'string' || !/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new Error(`${name} must be a 32-byte private key in hex`)
  }
  return PrivateKey.fromHex(hex)
}

function wallet (args, name) {
  return new ProtoWallet(privateKey(need(args, name), name))
}

function certificateFrom (obj) {
  return new Certificate(
    need(obj, 'type'),
    need(obj, 'serialNumber'),
    need(obj, 'subject'),
    need(obj, 'certifier'),
    need(obj, 'revocationOutpoint'),
    need(obj, 'fields'),
    obj.signature
  )
}

function certificateJson (cert) {
  const out = {
    type: cert.type,
    serialNumber: cert.serialNumber,
    subject: cert.subject,
    certifier: cert.certifier,
    revocationOutpoint: cert.revocationOutpoint,
    fields: cert.fields
  }
  if (cert.signature !== undefined) out.signature = cert.signature
  return out
}

const ops = {
  // Run the SDK's own script interpreter over every input of `tx` (hex), each spending
  // an output of `sources[i]` (hex). Only the spend is judged: the sources count as
  // verified ('scripts only' accepts a transaction with a merkle path as it is).
  verifyScripts: async (args) => {
    const tx = Transaction.fromHex(need(args, 'tx'))
    const sources = need(args, 'sources')
    if (sources.length !== tx.inputs.length) throw new Error('one source per input')
    tx.inputs.forEach((input, i) => {
      const source = Transaction.fromHex(sources[i])
      source.merklePath = {}
      input.sourceTransaction = source
    })
    return { valid: await tx.verify('scripts only') }
  },
  async pubkey (args) {
    return { pubkey: privateKey(need(args, 'key'), 'key').toPublicKey().toString() }
  },

  async issue (args) {
    const certifierWallet = wallet(args, 'certifierKey')
    const outpoint = need(args, 'revocationOutpoint')
    const cert = await MasterCertificate.issueCertificateForSubject(
      certifierWallet,
      need(args, 'subject'),
      need(args, 'fields'),
      need(args, 'type'),
      async () => outpoint,
      args.serialNumber ?? undefined
    )
    return { certificate: certificateJson(cert), masterKeyring: cert.masterKeyring }
  },

  // Signs an unsigned certificate (fields already encrypted) as the certifier; the SDK
  // overwrites `certifier` with the signing wallet's identity key.
  async sign (args) {
    const cert = certificateFrom(need(args, 'certificate'))
    cert.signature = undefined
    await cert.sign(wallet(args, 'certifierKey'))
    return { certificate: certificateJson(cert) }
  },

  // Certificate.verify() resolves true or throws (ProtoWallet.verifySignature throws
  // "Signature is not valid"; malformed DER throws from Signature.fromDER): normalise.
  async verify (args) {
    const cert = certificateFrom(need(args, 'certificate'))
    try {
      const valid = await cert.verify()
      return valid === true ? { valid: true } : { valid: false, error: `verify returned ${valid}` }
    } catch (e) {
      return { valid: false, error: e instanceof Error ? e.message : String(e) }
    }
  },

  async binary (args) {
    const cert = certificateFrom(need(args, 'certificate'))
    const includeSignature = args.includeSignature ?? true
    return { hex: Utils.toHex(cert.toBinary(includeSignature)) }
  },

  async fromBinary (args) {
    const cert = Certificate.fromBinary(Utils.toArray(need(args, 'hex'), 'hex'))
    return { certificate: certificateJson(cert) }
  },

  async decryptMaster (args) {
    const fields = await MasterCertificate.decryptFields(
      wallet(args, 'subjectKey'),
      need(args, 'masterKeyring'),
      need(args, 'fields'),
      need(args, 'certifier')
    )
    return { fields }
  },

  async keyringForVerifier (args) {
    const keyring = await MasterCertificate.createKeyringForVerifier(
      wallet(args, 'subjectKey'),
      need(args, 'certifier'),
      need(args, 'verifier'),
      need(args, 'fields'),
      need(args, 'fieldsToReveal'),
      need(args, 'masterKeyring'),
      need(args, 'serialNumber')
    )
    return { keyring }
  },

  async decryptForVerifier (args) {
    const c = need(args, 'certificate')
    const cert = new VerifiableCertificate(
      need(c, 'type'),
      need(c, 'serialNumber'),
      need(c, 'subject'),
      need(c, 'certifier'),
      need(c, 'revocationOutpoint'),
      need(c, 'fields'),
      need(args, 'keyring'),
      c.signature
    )
    return { fields: await cert.decryptFields(wallet(args, 'verifierKey')) }
  }
}

async function main () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  let reply
  try {
    const request = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    const op = ops[request.op]
    if (typeof op !== 'function' || !Object.hasOwn(ops, request.op)) {
      throw new Error(`unknown op: ${JSON.stringify(request.op)}`)
    }
    reply = { ok: true, result: await op(request.args ?? {}) }
  } catch (e) {
    reply = {
      ok: false,
      error: e instanceof Error ? e.message : String(e),
      name: e instanceof Error ? e.name : typeof e,
      stack: e instanceof Error ? e.stack : undefined
    }
  }
  process.stdout.write(JSON.stringify(reply) + '\n')
}

main().catch((e) => {
  process.stderr.write(`sdk_ops.cjs crashed: ${e && e.stack ? e.stack : e}\n`)
  process.exitCode = 70
})
