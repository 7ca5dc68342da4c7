// Integer softmax, GELU and LayerNorm lanes (I-BERT's integer-only algorithms), the vector units beside the array
// (neurohw.accel.units). The integer reference they must equal bit for bit, the constants and the scales are in
// neurohw/rtl/vector.py; its docstring has the maths. One lane processes one row of n <= 2^NW elements, reading
// element rd_index each cycle (x_in must hold it before the next rising edge); a unit of LANES lanes runs LANES rows
// in lockstep (vector_top, generated).
//
// Every operator is combinational within one cycle (i-exp with its divider, the square root): the RTL is
// functionally and cycle exact, not timing closed; a real design pipelines these stages (more latency, the same
// throughput of one element per lane per cycle).

// i-exp: exp(q S) ~ 2^-z L(r) with q <= 0, z = floor(-q / q_ln2), r = q + z q_ln2, L(r) = (r + q_b)^2 + q_c.
module i_exp #(parameter IW = 17) (
    input  wire signed [IW-1:0] q,      // <= 0
    input  wire [15:0]          q_ln2,  // floor(ln 2 / S) >= 2
    input  wire [15:0]          q_b,    // floor(b / S)
    input  wire [31:0]          q_c,    // floor(c / (a S^2))
    output wire [31:0]          e
);
    wire [IW-1:0] nq = -q;
    wire [IW-1:0] z = nq / q_ln2;
    wire signed [IW+16:0] r = $signed({q[IW-1], q}) + $signed({1'b0, z * q_ln2});
    wire [IW+16:0] t = r + q_b;  // > 0 since b > ln 2
    wire [63:0] l = t * t + q_c;
    assign e = (z > 31) ? 32'd0 : l[31:0] >> z;
endmodule

// Softmax over a row: pass 1 the maximum m, pass 2 sum = sum_j iexp(x_j - m), one cycle for
// factor = floor(2^FB / sum), pass 3 out_j = min((iexp(x_j - m) * factor) >> (FB - OB), 2^OB - 1).
// Busy cycles per row: 3n + 1.
module softmax_lane #(parameter IW = 16, parameter NW = 12, parameter OB = 8, parameter FB = 48) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,
    input  wire [NW:0]          n_len,
    input  wire [15:0]          q_ln2,
    input  wire [15:0]          q_b,
    input  wire [31:0]          q_c,
    input  wire signed [IW-1:0] x_in,
    output wire [NW-1:0]        rd_index,
    output wire                 busy,
    output reg                  done,
    output reg                  out_valid,
    output reg  [NW-1:0]        out_index,
    output reg  [OB-1:0]        out
);
    localparam IDLE = 3'd0, P1 = 3'd1, P2 = 3'd2, DIV = 3'd3, P3 = 3'd4;
    reg [2:0] state;
    reg [NW-1:0] idx;
    reg signed [IW-1:0] m;
    reg [NW+31:0] sum;
    reg [FB:0] factor;
    wire last = (idx == n_len - 1);
    wire signed [IW:0] q = $signed({x_in[IW-1], x_in}) - $signed({m[IW-1], m});
    wire [31:0] e;
    i_exp #(.IW(IW + 1)) exp_unit(.q(q), .q_ln2(q_ln2), .q_b(q_b), .q_c(q_c), .e(e));
    wire [FB+32:0] scaled = (e * factor) >> (FB - OB);
    assign rd_index = idx;
    assign busy = (state != IDLE);

    always @(posedge clk) begin
        done <= 1'b0;
        out_valid <= 1'b0;
        if (rst) begin
            state <= IDLE;
            idx <= 0;
        end else case (state)
            IDLE: if (start) begin
                state <= P1;
                idx <= 0;
                m <= {1'b1, {(IW-1){1'b0}}};
            end
            P1: begin
                if (x_in > m) m <= x_in;
                idx <= last ? 0 : idx + 1;
                if (last) begin state <= P2; sum <= 0; end
            end
            P2: begin
                sum <= sum + e;
                idx <= last ? 0 : idx + 1;
                if (last) state <= DIV;
            end
            DIV: begin
                factor <= ({{FB{1'b0}}, 1'b1} << FB) / sum;
                state <= P3;
            end
            P3: begin
                out_valid <= 1'b1;
                out_index <= idx;
                out <= (scaled > (1 << OB) - 1) ? {OB{1'b1}} : scaled[OB-1:0];
                idx <= last ? 0 : idx + 1;
                if (last) begin state <= IDLE; done <= 1'b1; end
            end
            default: state <= IDLE;
        endcase
    end
endmodule

// i-GELU: erf = floor(sign(x) ((min(|x|, -q_b) + q_b)^2 + q_c) / 2^erf_shift), y = x (erf + one), then the
// requantizer of common.v to OW bits. One pass, one element per cycle: busy cycles = n.
module gelu_lane #(parameter IW = 16, parameter NW = 12, parameter OW = 8) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,
    input  wire [NW:0]          n_len,
    input  wire signed [15:0]   q_b,        // floor(b / S_erf) < 0
    input  wire signed [31:0]   q_c,        // floor(1 / (a S_erf^2)) < 0
    input  wire [5:0]           erf_shift,
    input  wire signed [31:0]   one,        // floor(1 / erf scale)
    input  wire signed [31:0]   mult,
    input  wire [5:0]           shift,
    input  wire signed [IW-1:0] x_in,
    output wire [NW-1:0]        rd_index,
    output wire                 busy,
    output reg                  done,
    output reg                  out_valid,
    output reg  [NW-1:0]        out_index,
    output reg  [OW-1:0]        out
);
    reg running;
    reg [NW-1:0] idx;
    wire last = (idx == n_len - 1);
    wire signed [IW:0] xa = x_in[IW-1] ? -$signed({x_in[IW-1], x_in}) : $signed({x_in[IW-1], x_in});
    wire signed [IW:0] clip = (xa > -q_b) ? -q_b : xa;
    wire signed [IW+1:0] t = clip + q_b;
    wire signed [63:0] l = t * t + q_c;
    wire signed [63:0] erf_s = (x_in == 0) ? 64'sd0 : x_in[IW-1] ? -l : l;
    wire signed [63:0] erf = erf_s >>> erf_shift;
    wire signed [63:0] y = x_in * (erf + one);
    wire signed [OW-1:0] yq;
    requant #(.ACCW(64), .OW(OW)) rq(.a(y), .mult(mult), .shift(shift), .y(yq));
    assign rd_index = idx;
    assign busy = running;

    always @(posedge clk) begin
        done <= 1'b0;
        out_valid <= 1'b0;
        if (rst) begin
            running <= 1'b0;
            idx <= 0;
        end else if (!running) begin
            if (start) begin running <= 1'b1; idx <= 0; end
        end else begin
            out_valid <= 1'b1;
            out_index <= idx;
            out <= yq;
            idx <= last ? 0 : idx + 1;
            if (last) begin running <= 1'b0; done <= 1'b1; end
        end
    end
endmodule

// LayerNorm over a row: pass 1 s1 = sum x, s2 = sum x^2; then one cycle each for
//     mean = s1 / n (truncated), var = s2 - 2 mean s1 + n mean^2 + eps (= sum (x - mean)^2 + eps exactly),
//     std = isqrt(var), factor = floor(2^FB / std) (0 when std = 0);
// pass 2 h = ((x - mean) factor) >>> (FB - NB), out = requant(h gamma_j + beta_j). Busy cycles per row: 2n + 3.
module layernorm_lane #(parameter IW = 16, parameter NW = 12, parameter OW = 8, parameter FB = 40, parameter NB = 16) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,
    input  wire [NW:0]          n_len,
    input  wire [31:0]          eps,
    input  wire signed [31:0]   mult,
    input  wire [5:0]           shift,
    input  wire signed [IW-1:0] x_in,
    input  wire signed [15:0]   gamma_in,   // gamma of column rd_index
    input  wire signed [47:0]   beta_in,    // beta of column rd_index
    output wire [NW-1:0]        rd_index,
    output wire                 busy,
    output reg                  done,
    output reg                  out_valid,
    output reg  [NW-1:0]        out_index,
    output reg  [OW-1:0]        out
);
    localparam IDLE = 3'd0, P1 = 3'd1, STAT = 3'd2, SQRT = 3'd3, DIV = 3'd4, P2 = 3'd5;
    localparam VW = 2 * IW + NW + 2;  // sum of squares, variance
    reg [2:0] state;
    reg [NW-1:0] idx;
    reg signed [IW+NW:0] s1;
    reg signed [VW-1:0] s2;
    reg signed [IW:0] mean;
    reg [VW-1:0] variance;
    reg [VW/2:0] std;
    reg [FB:0] factor;
    wire last = (idx == n_len - 1);
    wire signed [NW+1:0] n_s = {1'b0, n_len};
    wire signed [IW:0] mean_w = s1 / n_s;  // truncated towards zero
    wire signed [VW-1:0] var_w = s2 - 2 * mean_w * s1 + n_s * mean_w * mean_w + $signed({1'b0, eps});
    wire signed [IW+1:0] d = $signed({x_in[IW-1], x_in}) - mean;
    wire signed [63:0] h = (d * $signed({1'b0, factor})) >>> (FB - NB);
    wire signed [63:0] acc = h * gamma_in + beta_in;
    wire signed [OW-1:0] yq;
    requant #(.ACCW(64), .OW(OW)) rq(.a(acc), .mult(mult), .shift(shift), .y(yq));
    assign rd_index = idx;
    assign busy = (state != IDLE);

    // floor(sqrt(v)), digit by digit (restoring), VW/2 + 1 steps unrolled
    function [VW/2:0] isqrt(input [VW-1:0] v);
        reg [VW+1:0] rem, root, bit_;
        integer b;
        begin
            rem = v;
            root = 0;
            for (b = VW / 2; b >= 0; b = b - 1) begin
                bit_ = {{(VW+1){1'b0}}, 1'b1} << (2 * b);
                if (rem >= root + bit_) begin
                    rem = rem - (root + bit_);
                    root = (root >> 1) + bit_;
                end else begin
                    root = root >> 1;
                end
            end
            isqrt = root[VW/2:0];
        end
    endfunction

    always @(posedge clk) begin
        done <= 1'b0;
        out_valid <= 1'b0;
        if (rst) begin
            state <= IDLE;
            idx <= 0;
        end else case (state)
            IDLE: if (start) begin
                state <= P1;
                idx <= 0;
                s1 <= 0;
                s2 <= 0;
            end
            P1: begin
                s1 <= s1 + x_in;
                s2 <= s2 + x_in * x_in;
                idx <= last ? 0 : idx + 1;
                if (last) state <= STAT;
            end
            STAT: begin
                mean <= mean_w;
                variance <= var_w;
                state <= SQRT;
            end
            SQRT: begin
                std <= isqrt(variance);
                state <= DIV;
            end
            DIV: begin
                factor <= (std == 0) ? 0 : ({{FB{1'b0}}, 1'b1} << FB) / std;
                state <= P2;
            end
            P2: begin
                out_valid <= 1'b1;
                out_index <= idx;
                out <= yq;
                idx <= last ? 0 : idx + 1;
                if (last) begin state <= IDLE; done <= 1'b1; end
            end
            default: state <= IDLE;
        endcase
    end
endmodule
